//! Custom HTTP route triggers (`kind = "http"`), end to end: real requests against the real
//! service, routing, errors, every auth scheme and signature preset, and `GET /jobs/{id}`.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::TestService;
use hmac::{Hmac, Mac};
use millgate_actors::job::JobStatus;
use serde_json::{json, Value};
use sha2::{Sha256, Sha512};

const ECHO: &str = r#"
[runnables.echo]
command = ["cat"]
timeout = "5s"
"#;

/// The event fields a route test looks at, echoed back by `cat` as the sync response.
const SHOW: &str = "{params, query, method, path, route, body}";

fn hmac_sha256(secret: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

fn hmac_sha512(secret: &str, body: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// `{"error": {"code", "message"}}` with the given code; returns the message.
fn error_message(body: &Value, code: &str) -> String {
    assert_eq!(body["error"]["code"], code, "{body}");
    body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {body}"))
        .to_string()
}

fn service_config(triggers: &str) -> String {
    format!("{ECHO}\n{triggers}")
}

// ---------------------------------------------------------------------------------------------
// Routing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn params_query_headers_and_body_reach_the_event() {
    let t = TestService::start(&service_config(&format!(
        r#"
[[triggers]]
name = "orders"
kind = "http"
method = "put"
path = "/shops/:shop/orders/:id"
mode = "sync"
runnable = "echo"
preprocessor = {{ jq = '{SHOW} + {{trace: .headers["x-trace"], ct: .content_type, format: .body_format}}' }}
"#
    )))
    .await;
    let (status, body) = send(
        t.client
            .put(t.url("/shops/north/orders/42?expand=items&page=2"))
            .header("x-trace", "abc-123")
            .json(&json!({"qty": 3, "sku": "X-1"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["params"], json!({"shop": "north", "id": "42"}));
    assert_eq!(body["query"], json!({"expand": "items", "page": "2"}));
    assert_eq!(body["method"], "PUT");
    assert_eq!(body["path"], "/shops/north/orders/42");
    assert_eq!(body["route"], "/shops/:shop/orders/:id");
    assert_eq!(body["body"], json!({"qty": 3, "sku": "X-1"}));
    assert_eq!(body["trace"], "abc-123");
    assert_eq!(body["ct"], "application/json");
    assert_eq!(body["format"], "json");

    // The job is stored with the same event and the echoed result.
    let jobs = t.jobs_of("orders");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].status, JobStatus::Succeeded);
    assert_eq!(jobs[0].kind, "http");
    assert_eq!(jobs[0].event["params"]["id"], "42");
    assert_eq!(jobs[0].result.as_ref(), Some(&body));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_captures_the_rest_of_the_path() {
    let t = TestService::start(&service_config(&format!(
        r#"
[[triggers]]
name = "files"
kind = "http"
method = "get"
path = "/files/:bucket/*rest"
mode = "sync"
runnable = "echo"
preprocessor = {{ jq = '{SHOW}' }}
"#
    )))
    .await;
    let (status, body) = send(t.client.get(t.url("/files/docs/a/b/report.txt"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["params"],
        json!({"bucket": "docs", "rest": "a/b/report.txt"})
    );
    assert_eq!(body["method"], "GET");
    assert_eq!(body["route"], "/files/:bucket/*rest");
    assert_eq!(body["body"], Value::Null);
    assert_eq!(body["query"], json!({}));

    // A single segment is enough for the wildcard.
    let (status, body) = send(t.client.get(t.url("/files/docs/x"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["params"]["rest"], "x");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_params_are_percent_decoded() {
    let t = TestService::start(&service_config(&format!(
        r#"
[[triggers]]
name = "greet"
kind = "http"
path = "/greet/:name"
mode = "sync"
runnable = "echo"
preprocessor = {{ jq = '{SHOW}' }}

[[triggers]]
name = "files"
kind = "http"
method = "get"
path = "/files/*rest"
mode = "sync"
runnable = "echo"
preprocessor = {{ jq = '{SHOW}' }}
"#
    )))
    .await;
    let (status, body) = send(t.client.post(t.url("/greet/Ada%20Lovelace%C3%A9"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["params"]["name"], "Ada Lovelaceé");
    // `path` stays as called.
    assert_eq!(body["path"], "/greet/Ada%20Lovelace%C3%A9");

    let (status, body) = send(t.client.get(t.url("/files/dir%2Fname/b%20c"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["params"]["rest"], "dir/name/b c");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_path_is_404_and_wrong_method_is_405_with_json_errors() {
    let t = TestService::start(&service_config(
        r#"
[[triggers]]
name = "orders"
kind = "http"
method = "post"
path = "/orders/:id"
runnable = "echo"

[[triggers]]
name = "orders-read"
kind = "http"
method = "get"
path = "/orders/:id"
mode = "sync"
runnable = "echo"
"#,
    ))
    .await;
    let (status, body) = send(t.client.post(t.url("/nowhere/1"))).await;
    assert_eq!(status, 404, "{body}");
    let m = error_message(&body, "not_found");
    assert!(m.contains("/nowhere/1"), "{m}");

    // One segment too many does not match `/orders/:id`.
    let (status, body) = send(t.client.post(t.url("/orders/1/extra"))).await;
    assert_eq!(status, 404, "{body}");
    error_message(&body, "not_found");

    let resp = t.client.delete(t.url("/orders/7")).send().await.unwrap();
    assert_eq!(resp.headers()["allow"], "GET, POST");
    let (status, body) = send(t.client.delete(t.url("/orders/7"))).await;
    assert_eq!(status, 405, "{body}");
    let m = error_message(&body, "method_not_allowed");
    assert!(m.contains("DELETE") && m.contains("/orders/7"), "{m}");

    // The listener's own endpoints answer a wrong method with the same JSON error shape.
    let (status, body) = send(t.client.get(t.url("/hooks/anything"))).await;
    assert_eq!(status, 405, "{body}");
    error_message(&body, "method_not_allowed");

    // Both methods that are configured do route, each to its own trigger.
    let (status, body) = send(t.client.post(t.url("/orders/7")).json(&json!({}))).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = send(t.client.get(t.url("/orders/8"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(t.jobs_of("orders").len(), 1);
    assert_eq!(t.jobs_of("orders-read").len(), 1);
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Shared-secret auth

const BEARER_ROUTE: &str = r#"
[[triggers]]
name = "secured"
kind = "http"
path = "/secured/:id"
mode = "async"
runnable = "echo"
auth = { type = "bearer", token = "s3cret-token" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_auth() {
    let t = TestService::start(&service_config(BEARER_ROUTE)).await;
    let url = t.url("/secured/1");

    let (status, body) = send(t.client.post(&url).json(&json!({"a": 1}))).await;
    assert_eq!(status, 401, "{body}");
    let m = error_message(&body, "unauthorized");
    assert!(m.contains("Bearer"), "{m}");

    let (status, body) = send(
        t.client
            .post(&url)
            .bearer_auth("wrong-token")
            .json(&json!({"a": 1})),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let m = error_message(&body, "unauthorized");
    assert!(!m.contains("wrong-token") && !m.contains("s3cret"), "{m}");

    // Another scheme is refused too.
    let (status, body) = send(
        t.client
            .post(&url)
            .basic_auth("s3cret-token", Some(""))
            .json(&json!({"a": 1})),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(t.jobs_of("secured").is_empty());

    // The scheme name is case-insensitive.
    let (status, body) = send(
        t.client
            .post(&url)
            .header("authorization", "bearer s3cret-token")
            .json(&json!({"a": 1})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["job_id"].as_str().expect("job_id").to_string();
    let record = t.wait_final(&id, Duration::from_secs(5)).await;
    assert_eq!(record.status, JobStatus::Succeeded, "{:?}", record.error);
    assert_eq!(record.trigger, "secured");
    assert_eq!(t.jobs_of("secured").len(), 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_do_not_leak_into_the_stored_event() {
    let t = TestService::start(&service_config(&format!(
        r#"{BEARER_ROUTE}
[[triggers]]
name = "keyed"
kind = "http"
path = "/keyed"
runnable = "echo"
auth = {{ type = "api_key", header = "X-Api-Key", key = "k-123" }}

[[triggers]]
name = "basic"
kind = "http"
path = "/basic"
runnable = "echo"
auth = {{ type = "basic", username = "ada", password = "pw" }}
"#
    )))
    .await;
    let (status, body) = send(
        t.client
            .post(t.url("/secured/9"))
            .bearer_auth("s3cret-token")
            .header("x-other", "kept")
            .json(&json!({"n": 1})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["job_id"].as_str().unwrap().to_string();
    t.wait_final(&id, Duration::from_secs(5)).await;
    let event = t.job(&id).unwrap().event;
    let headers = event["headers"].as_object().expect("headers");
    assert!(!headers.contains_key("authorization"), "{event}");
    assert_eq!(headers["x-other"], "kept");
    assert!(!event.to_string().contains("s3cret-token"), "{event}");
    // The job's args (the default preprocessor's output) do not carry it either.
    assert!(!t
        .job(&id)
        .unwrap()
        .args
        .to_string()
        .contains("s3cret-token"));

    let (status, body) = send(
        t.client
            .post(t.url("/keyed"))
            .header("x-api-key", "k-123")
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let event = t.job(body["job_id"].as_str().unwrap()).unwrap().event;
    assert!(!event["headers"]
        .as_object()
        .unwrap()
        .contains_key("x-api-key"));
    assert!(!event.to_string().contains("k-123"), "{event}");

    let (status, body) = send(
        t.client
            .post(t.url("/basic"))
            .basic_auth("ada", Some("pw"))
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let event = t.job(body["job_id"].as_str().unwrap()).unwrap().event;
    assert!(!event["headers"]
        .as_object()
        .unwrap()
        .contains_key("authorization"));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_auth_in_a_custom_header() {
    let t = TestService::start(&service_config(
        r#"
[[triggers]]
name = "keyed"
kind = "http"
path = "/keyed"
mode = "sync"
runnable = "echo"
auth = { type = "api_key", header = "X-Api-Key", key = "k-123" }
preprocessor = { jq = '{ok: true}' }
"#,
    ))
    .await;
    let url = t.url("/keyed");
    let (status, body) = send(t.client.post(&url)).await;
    assert_eq!(status, 401, "{body}");
    let m = error_message(&body, "unauthorized");
    assert!(m.contains("X-Api-Key"), "{m}");

    let (status, body) = send(t.client.post(&url).header("x-api-key", "k-12")).await;
    assert_eq!(status, 401, "{body}");
    // The key in another header (here as a bearer token) does not count.
    let (status, body) = send(t.client.post(&url).bearer_auth("k-123")).await;
    assert_eq!(status, 401, "{body}");
    assert!(t.jobs_of("keyed").is_empty());

    // Header names are case-insensitive.
    let (status, body) = send(t.client.post(&url).header("X-API-KEY", "k-123")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"ok": true}));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_with_a_colon_in_the_password() {
    let t = TestService::start(&service_config(
        r#"
[[triggers]]
name = "basic"
kind = "http"
path = "/basic"
mode = "sync"
runnable = "echo"
auth = { type = "basic", username = "ada", password = "pa:ss:word" }
preprocessor = { jq = '{ok: true}' }
"#,
    ))
    .await;
    let url = t.url("/basic");
    let (status, body) = send(t.client.post(&url)).await;
    assert_eq!(status, 401, "{body}");
    error_message(&body, "unauthorized");

    for (user, pass) in [
        ("ada", "pa:ss"),
        ("ada", "pa:ss:word:"),
        ("ad", "pa:ss:word"),
        ("Ada", "pa:ss:word"),
    ] {
        let (status, body) = send(t.client.post(&url).basic_auth(user, Some(pass))).await;
        assert_eq!(status, 401, "{user}:{pass} {body}");
    }
    let (status, body) = send(
        t.client
            .post(&url)
            .header("authorization", "Basic not base64!"),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(t.jobs_of("basic").is_empty());

    let (status, body) = send(t.client.post(&url).basic_auth("ada", Some("pa:ss:word"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"ok": true}));
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Signatures

const SIGNED_ROUTES: &str = r#"
[[triggers]]
name = "github"
kind = "http"
path = "/gh"
mode = "sync"
runnable = "echo"
auth = { type = "signature", preset = "github", secret = "gh-secret" }
preprocessor = { jq = '{body}' }

[[triggers]]
name = "stripe"
kind = "http"
path = "/stripe"
mode = "sync"
runnable = "echo"
auth = { type = "signature", preset = "stripe", secret = "whsec_test" }
preprocessor = { jq = '{body}' }

[[triggers]]
name = "slack"
kind = "http"
path = "/slack"
mode = "sync"
runnable = "echo"
auth = { type = "signature", preset = "slack", secret = "slack-secret" }
preprocessor = { jq = '{body}' }

[[triggers]]
name = "custom"
kind = "http"
path = "/custom"
mode = "sync"
runnable = "echo"
auth = { type = "signature", preset = "custom", secret = "c-secret", algorithm = "sha512", encoding = "base64", header = "X-Signature", prefix = "sha512=" }
preprocessor = { jq = '{body}' }
"#;

async fn signed_service() -> TestService {
    TestService::start(&service_config(SIGNED_ROUTES)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_signature() {
    let t = signed_service().await;
    let body = br#"{"action":"opened","number":7}"#;
    let sig = format!("sha256={}", hex::encode(hmac_sha256("gh-secret", &[body])));
    let post = |b: &'static [u8], sig: Option<String>| {
        let mut r = t
            .client
            .post(t.url("/gh"))
            .header("content-type", "application/json")
            .body(b);
        if let Some(s) = sig {
            r = r.header("X-Hub-Signature-256", s);
        }
        send(r)
    };

    let (status, resp) = post(body, Some(sig.clone())).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["body"], json!({"action": "opened", "number": 7}));

    // Upper-case hex is the same signature.
    let (status, resp) = post(body, Some(sig.to_uppercase().replace("SHA256=", "sha256="))).await;
    assert_eq!(status, 200, "{resp}");

    // Same signature, tampered body.
    let (status, resp) = post(br#"{"action":"opened","number":8}"#, Some(sig.clone())).await;
    assert_eq!(status, 401, "{resp}");
    let m = error_message(&resp, "unauthorized");
    assert!(m.contains("signature"), "{m}");

    // Signed with another secret.
    let other = format!("sha256={}", hex::encode(hmac_sha256("nope", &[body])));
    let (status, resp) = post(body, Some(other)).await;
    assert_eq!(status, 401, "{resp}");

    let (status, resp) = post(body, None).await;
    assert_eq!(status, 401, "{resp}");
    let m = error_message(&resp, "unauthorized");
    assert!(m.contains("X-Hub-Signature-256"), "{m}");

    assert_eq!(t.jobs_of("github").len(), 2);
    t.stop().await;
}

fn stripe_header(secret: &str, ts: i64, body: &[u8]) -> String {
    let sig = hmac_sha256(secret, &[ts.to_string().as_bytes(), b".", body]);
    format!("t={ts},v1={}", hex::encode(sig))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_signature() {
    let t = signed_service().await;
    let body: &[u8] = br#"{"id":"evt_1","type":"charge.succeeded"}"#;
    let post = |b: &'static [u8], header: String| {
        send(
            t.client
                .post(t.url("/stripe"))
                .header("content-type", "application/json")
                .header("Stripe-Signature", header)
                .body(b),
        )
    };

    let (status, resp) = post(body, stripe_header("whsec_test", now(), body)).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["body"]["type"], "charge.succeeded");

    // While a secret rolls, Stripe sends one v1 per secret: any match is enough.
    let ts = now();
    let good = stripe_header("whsec_test", ts, body);
    let old = stripe_header("whsec_old", ts, body);
    let v1_old = old.split_once(",v1=").unwrap().1;
    let (status, resp) = post(body, format!("{good},v1={v1_old}")).await;
    assert_eq!(status, 200, "{resp}");

    // Tampered body.
    let tampered: &'static [u8] = br#"{"id":"evt_1","type":"charge.refunded"}"#;
    let (status, resp) = post(tampered, stripe_header("whsec_test", now(), body)).await;
    assert_eq!(status, 401, "{resp}");
    let m = error_message(&resp, "unauthorized");
    assert!(m.contains("signature"), "{m}");

    // The timestamp is signed: changing it breaks the signature.
    let header =
        stripe_header("whsec_test", ts, body).replace(&format!("t={ts}"), &format!("t={}", ts + 1));
    let (status, _) = post(body, header).await;
    assert_eq!(status, 401);

    // Genuine but ten minutes old: a replay.
    let (status, resp) = post(body, stripe_header("whsec_test", now() - 600, body)).await;
    assert_eq!(status, 401, "{resp}");
    let m = error_message(&resp, "unauthorized");
    assert!(m.contains("timestamp") && m.contains("tolerance"), "{m}");
    assert!(m.contains("300"), "names the tolerance: {m}");

    let (status, resp) = post(body, "v1=abc".into()).await;
    assert_eq!(status, 401, "{resp}");
    let m = error_message(&resp, "unauthorized");
    assert!(m.contains("Stripe-Signature"), "{m}");

    // Both genuine deliveries carry the event `evt_1`: one job.
    assert_eq!(t.jobs_of("stripe").len(), 1);
    t.stop().await;
}

fn slack_headers(secret: &str, ts: i64, body: &[u8]) -> (String, String) {
    let sig = hmac_sha256(secret, &[b"v0:", ts.to_string().as_bytes(), b":", body]);
    (ts.to_string(), format!("v0={}", hex::encode(sig)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_signature() {
    let t = signed_service().await;
    let body: &'static [u8] = b"token=x&team_id=T1&command=%2Fdeploy&text=prod";
    let post = |b: &'static [u8], (ts, sig): (String, String)| {
        send(
            t.client
                .post(t.url("/slack"))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("X-Slack-Request-Timestamp", ts)
                .header("X-Slack-Signature", sig)
                .body(b),
        )
    };

    let (status, resp) = post(body, slack_headers("slack-secret", now(), body)).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["body"]["command"], "/deploy");
    assert_eq!(resp["body"]["text"], "prod");

    let (status, resp) = post(
        b"token=x&team_id=T1&command=%2Fdeploy&text=dev",
        slack_headers("slack-secret", now(), body),
    )
    .await;
    assert_eq!(status, 401, "{resp}");

    // Expired: signed correctly, ten minutes ago.
    let (status, resp) = post(body, slack_headers("slack-secret", now() - 600, body)).await;
    assert_eq!(status, 401, "{resp}");
    let m = error_message(&resp, "unauthorized");
    assert!(m.contains("timestamp") && m.contains("tolerance"), "{m}");

    // From the future, beyond the tolerance.
    let (status, resp) = post(body, slack_headers("slack-secret", now() + 600, body)).await;
    assert_eq!(status, 401, "{resp}");
    assert!(error_message(&resp, "unauthorized").contains("future"));

    assert_eq!(t.jobs_of("slack").len(), 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_signature_sha512_base64_with_prefix() {
    let t = signed_service().await;
    let body: &'static [u8] = br#"{"order":1}"#;
    let tag = hmac_sha512("c-secret", body);
    let post = |b: &'static [u8], sig: String| {
        send(
            t.client
                .post(t.url("/custom"))
                .header("content-type", "application/json")
                .header("X-Signature", sig)
                .body(b),
        )
    };

    let (status, resp) = post(body, format!("sha512={}", B64.encode(&tag))).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["body"], json!({"order": 1}));

    let (status, resp) = post(br#"{"order":2}"#, format!("sha512={}", B64.encode(&tag))).await;
    assert_eq!(status, 401, "{resp}");

    // Missing prefix: malformed, and the message says what was expected.
    let (status, resp) = post(body, B64.encode(&tag)).await;
    assert_eq!(status, 401, "{resp}");
    let m = error_message(&resp, "unauthorized");
    assert!(m.contains("X-Signature") && m.contains("sha512="), "{m}");

    // Hex where base64 is configured does not verify.
    let (status, resp) = post(body, format!("sha512={}", hex::encode(&tag))).await;
    assert_eq!(status, 401, "{resp}");

    // A SHA-256 tag where SHA-512 is configured does not verify.
    let short = hmac_sha256("c-secret", &[body]);
    let (status, resp) = post(body, format!("sha512={}", B64.encode(short))).await;
    assert_eq!(status, 401, "{resp}");

    assert_eq!(t.jobs_of("custom").len(), 1);
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// GET /jobs/{id}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_status_of_an_http_route_job() {
    let t = TestService::start(&service_config(&format!(
        r#"{BEARER_ROUTE}
[[triggers]]
name = "signed"
kind = "http"
path = "/signed"
runnable = "echo"
auth = {{ type = "signature", preset = "github", secret = "gh" }}
"#
    )))
    .await;
    let (status, body) = send(
        t.client
            .post(t.url("/secured/5"))
            .bearer_auth("s3cret-token")
            .json(&json!({"x": 5})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["job_id"].as_str().unwrap().to_string();
    let record = t.wait_final(&id, Duration::from_secs(5)).await;
    assert_eq!(record.status, JobStatus::Succeeded, "{:?}", record.error);

    let job_url = t.url(&format!("/jobs/{id}"));
    let (status, body) = send(t.client.get(&job_url).bearer_auth("s3cret-token")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["job_id"], id.as_str());
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["trigger"], "secured");
    assert_eq!(body["result"], *record.result.as_ref().expect("result"));
    // The default preprocessor passes the JSON body as the args, and `cat` echoes them.
    assert_eq!(body["result"], json!({"x": 5}), "{body}");

    let (status, body) = send(t.client.get(&job_url)).await;
    assert_eq!(status, 401, "{body}");
    error_message(&body, "unauthorized");
    let (status, body) = send(t.client.get(&job_url).bearer_auth("wrong")).await;
    assert_eq!(status, 401, "{body}");
    // A webhook-style `?token=` is not this route's auth.
    let (status, body) = send(t.client.get(format!("{job_url}?token=s3cret-token"))).await;
    assert_eq!(status, 401, "{body}");

    // A job that does not exist gets the answer a job these credentials cannot read gets,
    // with or without credentials: the endpoint tells nobody which ids exist.
    let (_, refused) = send(t.client.get(&job_url)).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let unknown_url = t.url(&format!("/jobs/{unknown}"));
    let same_as_refused = |status: u16, body: &Value| {
        assert_eq!(status, 401, "{body}");
        assert_eq!(
            body.to_string().replace(&unknown, &id),
            refused.to_string(),
            "a missing job is told apart from an unreadable one"
        );
    };
    let (status, body) = send(t.client.get(&unknown_url)).await;
    same_as_refused(status, &body);
    let (status, body) = send(t.client.get(&unknown_url).bearer_auth("s3cret-token")).await;
    same_as_refused(status, &body);

    let (status, body) = send(t.client.get(t.url("/jobs/not-a-job-id"))).await;
    assert_eq!(status, 400, "{body}");
    error_message(&body, "bad_job_id");

    // Jobs of signature routes cannot be read here at all (there is no credential to show).
    let payload = br#"{"s":1}"#;
    let sig = format!("sha256={}", hex::encode(hmac_sha256("gh", &[payload])));
    let (status, body) = send(
        t.client
            .post(t.url("/signed"))
            .header("X-Hub-Signature-256", sig.clone())
            .body(&payload[..]),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let signed_id = body["job_id"].as_str().unwrap().to_string();
    let (status, body) = send(
        t.client
            .get(t.url(&format!("/jobs/{signed_id}")))
            .header("X-Hub-Signature-256", sig),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Replays: a delivery sent again makes no new job

const REPLAY_ROUTES: &str = r#"
[[triggers]]
name = "github"
kind = "http"
path = "/gh"
runnable = "echo"
auth = { type = "signature", preset = "github", secret = "gh-secret" }

[[triggers]]
name = "stripe"
kind = "http"
path = "/stripe"
runnable = "echo"
auth = { type = "signature", preset = "stripe", secret = "whsec_test" }

[[triggers]]
name = "slack"
kind = "http"
path = "/slack"
runnable = "echo"
auth = { type = "signature", preset = "slack", secret = "slack-secret" }

[[triggers]]
name = "sw"
kind = "http"
path = "/sw"
runnable = "echo"
auth = { type = "signature", preset = "standard_webhooks", secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }

[[triggers]]
name = "keyed"
kind = "http"
path = "/keyed"
runnable = "echo"
dedup_key = ".body.order"
"#;

/// A first delivery is queued (202); the same delivery again is answered with the first one's
/// jobs and `duplicate: true`.
async fn assert_replay_is_duplicate(first: (u16, Value), again: (u16, Value)) {
    let (status, body) = first;
    assert_eq!(status, 202, "{body}");
    let (status, dup) = again;
    assert_eq!(status, 200, "{dup}");
    assert_eq!(dup["duplicate"], true, "{dup}");
    assert_eq!(dup["job_ids"], body["job_ids"], "{dup}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_stripe_and_slack_replays_make_no_new_job() {
    let t = TestService::start(&service_config(REPLAY_ROUTES)).await;

    // GitHub: the delivery id; a redelivery has the same one.
    let body: &'static [u8] = br#"{"action":"opened","number":7}"#;
    let gh = |delivery: &str| {
        t.client
            .post(t.url("/gh"))
            .header("content-type", "application/json")
            .header(
                "X-Hub-Signature-256",
                format!("sha256={}", hex::encode(hmac_sha256("gh-secret", &[body]))),
            )
            .header("X-GitHub-Delivery", delivery.to_string())
            .body(body)
    };
    assert_replay_is_duplicate(send(gh("d-1")).await, send(gh("d-1")).await).await;
    // Copies arriving together still make one job.
    let copies = futures::future::join_all((0..20).map(|_| send(gh("d-2")))).await;
    assert_eq!(
        copies.iter().filter(|(s, _)| *s == 202).count(),
        1,
        "{copies:?}"
    );
    assert!(
        copies
            .iter()
            .all(|(s, b)| *s == 202 || b["duplicate"] == true),
        "{copies:?}"
    );
    assert_eq!(t.jobs_of("github").len(), 2);

    // Stripe: the event id, even when Stripe signs the retry anew.
    let event: &'static [u8] = br#"{"id":"evt_9","type":"charge.succeeded"}"#;
    let stripe = |ts: i64| {
        t.client
            .post(t.url("/stripe"))
            .header("content-type", "application/json")
            .header("Stripe-Signature", stripe_header("whsec_test", ts, event))
            .body(event)
    };
    assert_replay_is_duplicate(send(stripe(now() - 60)).await, send(stripe(now())).await).await;
    assert_eq!(t.jobs_of("stripe").len(), 1);

    // Slack: a slash command has no event id; the same signed request is the same delivery.
    let command: &'static [u8] = b"team_id=T1&command=%2Fdeploy&text=prod";
    let (ts, sig) = slack_headers("slack-secret", now(), command);
    let slack = || {
        t.client
            .post(t.url("/slack"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("X-Slack-Request-Timestamp", ts.clone())
            .header("X-Slack-Signature", sig.clone())
            .body(command)
    };
    assert_replay_is_duplicate(send(slack()).await, send(slack()).await).await;
    assert_eq!(t.jobs_of("slack").len(), 1);

    // `dedup_key`: any route names what identifies its events.
    let keyed = |b: Value| t.client.post(t.url("/keyed")).json(&b);
    assert_replay_is_duplicate(
        send(keyed(json!({"order": 5, "try": 1}))).await,
        send(keyed(json!({"order": 5, "try": 2}))).await,
    )
    .await;
    // Without a value there is nothing to deduplicate on.
    let (s1, _) = send(keyed(json!({"try": 3}))).await;
    let (s2, _) = send(keyed(json!({"try": 3}))).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(t.jobs_of("keyed").len(), 3);
    t.stop().await;
}

/// Signs with the official `standardwebhooks` package (PyPI), installed by scripts/services.sh.
fn standard_webhooks_sign(secret: &str, id: &str, ts: i64, body: &str) -> String {
    let venv = std::env::var("MILLGATE_PYENV")
        .unwrap_or_else(|_| format!("{}/.cache/millgate/pyenv", std::env::var("HOME").unwrap()));
    let out = std::process::Command::new(format!("{venv}/bin/python"))
        .args([
            "-c",
            "import sys, datetime\n\
             from standardwebhooks.webhooks import Webhook\n\
             ts = datetime.datetime.fromtimestamp(int(sys.argv[3]), tz=datetime.timezone.utc)\n\
             print(Webhook(sys.argv[1]).sign(sys.argv[2], ts, sys.argv[4]))",
            secret,
            id,
            &ts.to_string(),
            body,
        ])
        .output()
        .unwrap_or_else(|e| panic!("{venv}/bin/python: {e}; run scripts/services.sh"));
    assert!(
        out.status.success(),
        "standardwebhooks signing failed (run scripts/services.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_webhooks_signed_by_the_official_package() {
    let t = TestService::start(&service_config(REPLAY_ROUTES)).await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let body = r#"{"type":"invoice.paid","data":{"id":"in_1"}}"#;
    let post = |id: &str, ts: i64, signature: String, body: &str| {
        send(
            t.client
                .post(t.url("/sw"))
                .header("content-type", "application/json")
                .header("webhook-id", id.to_string())
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", signature)
                .body(body.to_string()),
        )
    };
    let ts = now();
    let good = standard_webhooks_sign(secret, "msg_1", ts, body);
    assert!(good.starts_with("v1,"), "{good}");
    let first = post("msg_1", ts, good.clone(), body).await;
    // The same message again (a retry carries its id): its first jobs, no new one.
    assert_replay_is_duplicate(first, post("msg_1", ts, good.clone(), body).await).await;

    // Several signatures while the secret rolls: one that matches is enough.
    let other = standard_webhooks_sign("whsec_QUJDREVGR0hJSktMTU5PUA==", "msg_2", ts, body);
    let good2 = standard_webhooks_sign(secret, "msg_2", ts, body);
    let (status, resp) = post("msg_2", ts, format!("{other} {good2}"), body).await;
    assert_eq!(status, 202, "{resp}");

    // Another secret, a tampered body, another id under the same signature: refused.
    let (status, resp) = post("msg_2", ts, other.clone(), body).await;
    assert_eq!(status, 401, "{resp}");
    let (status, resp) = post("msg_1", ts, good.clone(), r#"{"type":"invoice.void"}"#).await;
    assert_eq!(status, 401, "{resp}");
    assert!(error_message(&resp, "unauthorized").contains("signature"));
    let (status, resp) = post("msg_9", ts, good.clone(), body).await;
    assert_eq!(status, 401, "{resp}");

    // Signed correctly, ten minutes ago or ahead: outside the 5-minute tolerance.
    for skew in [-600, 600] {
        let old = standard_webhooks_sign(secret, "msg_4", ts + skew, body);
        let (status, resp) = post("msg_4", ts + skew, old, body).await;
        assert_eq!(status, 401, "{resp}");
        let m = error_message(&resp, "unauthorized");
        assert!(m.contains("tolerance"), "{m}");
    }
    // Missing headers are named.
    let (status, resp) = send(t.client.post(t.url("/sw")).body(body.to_string())).await;
    assert_eq!(status, 401, "{resp}");
    assert!(error_message(&resp, "unauthorized").contains("webhook-"));
    assert_eq!(t.jobs_of("sw").len(), 2);
    t.stop().await;
}
