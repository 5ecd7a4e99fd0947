//! The admin listener against a hostile web page and a careless install: cross-site and DNS
//! rebinding requests, content types a page can send without a preflight, triggers that would
//! run programs, secrets in answers, trigger names, and the generated admin token of the
//! embedded default configuration. Real service, real HTTP.

mod common;

use std::path::Path;
use std::time::Duration;

use common::binary::MillgateProcess;
use common::{TestService, ADMIN_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};

const BASE: &str = r#"
[runnables.echo]
kind = "echo"

[[triggers]]
name = "from-config"
kind = "webhook"
runnable = "echo"
"#;

/// A whole configuration: the test header's `[server]`/`[store]`, this `[admin]` table.
fn config(dir: &Path, admin_extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
sync_timeout = "5s"

[store]
path = "{}"

[admin]
listen = "127.0.0.1:0"
token = "{ADMIN_TOKEN}"
{admin_extra}
{BASE}"#,
        dir.join("data").display()
    )
}

async fn start(admin_extra: &str) -> TestService {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config(dir.path(), admin_extra);
    TestService::start_in(dir, &text).await
}

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

/// A trigger whose preprocessor runs a shell command that leaves `marker` behind.
fn command_trigger(name: &str, marker: &Path) -> Value {
    json!({
        "name": name, "kind": "webhook", "runnable": "echo",
        "preprocessor": {"command": ["sh", "-c", format!("id > {}; cat", marker.display())]}
    })
}

/// The attack a quick-start install fell to: a page the operator opens sends two "simple"
/// cross-origin requests (no preflight: `text/plain`, credentials in the URL) — one adds a
/// trigger whose preprocessor runs `sh -c`, the other fires it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_cannot_add_a_trigger_that_runs_commands() {
    let t = TestService::start(BASE).await;
    let marker = t.path("pwned");
    let body = command_trigger("pwn", &marker).to_string();
    let resp = t
        .client
        .post(format!("{}/api/triggers?token={ADMIN_TOKEN}", t.admin))
        .header("content-type", "text/plain;charset=UTF-8")
        .header("origin", "http://evil.example")
        .body(body.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 403, "the cross-site add is refused");
    let answer: Value = resp.json().await.unwrap_or_default();
    assert_eq!(code(&answer), "origin_not_allowed", "{answer}");
    let resp = t
        .client
        .post(t.url("/hooks/pwn"))
        .header("content-type", "text/plain;charset=UTF-8")
        .header("origin", "http://evil.example")
        .body("{}")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 404, "no trigger to fire");
    let (status, _) = t.admin_get("/api/triggers/pwn").await;
    assert_eq!(status, 404, "no trigger exists afterwards");
    assert!(t.app.service.registry.get("pwn").is_none());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!marker.exists(), "the command ran");

    // Each defence on its own, with the real token in its header where that is not the point.
    // Same origin, but a body a page may send cross-site unasked: 415.
    let (status, answer) = send(
        t.admin_req(Method::POST, "/api/triggers")
            .header("content-type", "text/plain")
            .header("origin", t.admin.clone())
            .body(json!({"name": "plain", "kind": "webhook", "runnable": "echo"}).to_string()),
    )
    .await;
    assert_eq!(status, 415, "{answer}");
    assert_eq!(code(&answer), "unsupported_media_type");
    assert!(message(&answer).contains("application/json"), "{answer}");
    let (status, answer) = send(
        t.admin_req(Method::POST, "/api/triggers")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("name=form"),
    )
    .await;
    assert_eq!(status, 415, "{answer}");
    // JSON with the token, from another site: 403.
    let (status, answer) = send(
        t.admin_req(Method::POST, "/api/triggers/from-config/disable")
            .header("origin", "https://evil.example"),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert!(message(&answer).contains("evil.example"), "{answer}");
    let (status, _) = send(
        t.admin_req(Method::GET, "/api/triggers")
            .header("origin", "null"),
    )
    .await;
    assert_eq!(status, 403, "an opaque origin is no origin of ours");
    // A page on another machine at the admin port is another site too.
    let port = t.app.admin_addr.expect("admin").port();
    let (status, answer) = send(
        t.admin_req(Method::GET, "/api/triggers")
            .header("origin", format!("http://203.0.113.9:{port}")),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(code(&answer), "origin_not_allowed");
    // DNS rebinding: the attacker's name resolved to 127.0.0.1, so its page is "same-origin".
    let (status, answer) = send(
        t.admin_req(Method::GET, "/api/triggers")
            .header("host", format!("rebind.evil.example:{port}")),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(code(&answer), "host_not_allowed");
    assert!(message(&answer).contains("allowed_hosts"), "{answer}");
    // With every header right, the command preprocessor itself is refused, naming the key.
    let (status, answer) = send(
        t.admin_req(Method::POST, "/api/triggers")
            .json(&command_trigger("pwn", &marker)),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(code(&answer), "commands_not_allowed");
    assert!(
        message(&answer).contains("preprocessor.command")
            && message(&answer).contains("[admin] allow_commands = true"),
        "{answer}"
    );
    let (status, _) = send(
        t.admin_req(Method::PUT, "/api/triggers/from-config")
            .json(&command_trigger("from-config", &marker)),
    )
    .await;
    assert_eq!(status, 403, "replacing is adding");
    assert!(t.app.service.registry.get("pwn").is_none());
    assert!(!marker.exists());
    t.stop().await;
}

/// What the CLI, curl and the dashboard send keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_own_forms_and_allowed_hosts_are_served() {
    let t = start(r#"allowed_hosts = ["admin.example.com"]"#).await;
    let port = t.app.admin_addr.expect("admin").port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "admin.example.com".to_string(),
        "admin.example.com:8443".to_string(),
    ] {
        let (status, body) = send(
            t.admin_req(Method::GET, "/api/triggers")
                .header("host", host.clone()),
        )
        .await;
        assert_eq!(status, 200, "Host {host}: {body}");
    }
    // The dashboard's own writes: Origin is the listener, bodies are JSON or TOML, or none.
    for origin in [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
        "https://admin.example.com".to_string(),
    ] {
        let (status, body) = send(
            t.admin_req(Method::POST, "/api/triggers/from-config/disable")
                .header("origin", origin.clone()),
        )
        .await;
        assert_eq!(status, 200, "Origin {origin}: {body}");
    }
    let (status, body) = send(
        t.admin_req(Method::POST, "/api/triggers")
            .header("origin", format!("http://127.0.0.1:{port}"))
            .header("content-type", "application/toml; charset=utf-8")
            .body("name = \"toml-one\"\nkind = \"webhook\"\nrunnable = \"echo\"\n"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // /healthz answers whatever the Host (load balancers' probes).
    let resp = t
        .client
        .get(format!("{}/healthz", t.admin))
        .header("host", "probe.internal")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // JSON-only routes say so for TOML.
    let (status, body) = send(
        t.admin_req(Method::POST, "/api/triggers/from-config/reset")
            .header("content-type", "application/toml")
            .body("to = \"earliest\""),
    )
    .await;
    assert_eq!(status, 415, "{body}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_through_the_api_need_allow_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("ran");
    let text = config(dir.path(), "allow_commands = true");
    let t = TestService::start_in(dir, &text).await;
    let (status, body) = send(
        t.admin_req(Method::POST, "/api/triggers")
            .json(&command_trigger("cmd", &marker)),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, out) = t.post_json("/hooks/cmd", None, &json!({"a": 1})).await;
    assert_eq!(status, 202, "{out}");
    assert!(marker.exists(), "the preprocessor ran");
    let job = out["job_id"].as_str().expect("job id");
    t.wait_final(job, Duration::from_secs(10)).await;
    t.stop().await;

    // Stored, then the operator turns commands off: the stored trigger is not started. (No
    // job runs before this restart: an instance that ran jobs may hold its sled lock for a
    // moment after `stop`, and the restart would fail on that.)
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("ran");
    let text = config(dir.path(), "allow_commands = true");
    let t = TestService::start_in(dir, &text).await;
    let (status, body) = send(
        t.admin_req(Method::POST, "/api/triggers")
            .json(&command_trigger("cmd", &marker)),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let dir = t.stop().await;
    let text = config(dir.path(), "");
    let t = TestService::start_in(dir, &text).await;
    let (status, _) = t.admin_get("/api/triggers/cmd").await;
    assert_eq!(
        status, 404,
        "a stored command trigger does not run without allow_commands"
    );
    let (status, _) = t.post_json("/hooks/cmd", None, &json!({})).await;
    assert_eq!(status, 404);
    assert!(!marker.exists());
    // Not started, but the operator can still remove it.
    let (status, _) = send(t.admin_req(Method::DELETE, "/api/triggers/cmd")).await;
    assert_eq!(status, 204);
    let (status, _) = send(t.admin_req(Method::DELETE, "/api/triggers/cmd")).await;
    assert_eq!(status, 404);
    let dir = t.stop().await;
    let text = config(dir.path(), "allow_commands = true");
    let t = TestService::start_in(dir, &text).await;
    let (status, _) = t.admin_get("/api/triggers/cmd").await;
    assert_eq!(status, 404, "removed from the store");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_properties_that_load_code_need_allow_commands() {
    let t = TestService::start(BASE).await;
    let (status, body) = send(t.admin_req(Method::POST, "/api/triggers").json(&json!({
        "name": "plugged", "kind": "kafka", "runnable": "echo",
        "brokers": ["127.0.0.1:9"], "topics": ["t"],
        "properties": {"plugin.library.paths": "/tmp/evil.so"}
    })))
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        message(&body).contains("properties.plugin.library.paths"),
        "{body}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_hidden_in_answers_and_errors() {
    let t = TestService::start(BASE).await;
    let (status, added) = send(t.admin_req(Method::POST, "/api/triggers").json(&json!({
        "name": "k", "kind": "kafka", "runnable": "echo",
        "brokers": ["127.0.0.1:9"], "topics": ["t"],
        "properties": {"ssl.keystore.password": "ks-s3cret", "ssl.key.pem": "pem-s3cret",
                       "fetch.max.bytes": "1048576"}
    })))
    .await;
    assert_eq!(status, 201, "{added}");
    let (status, sched) = send(t.admin_req(Method::POST, "/api/triggers").json(&json!({
        "name": "s", "kind": "schedule", "runnable": "echo", "cron": "0 0 1 1 *",
        "args": {"targets": [{"host": "db", "password": "list-s3cret"}]}
    })))
    .await;
    assert_eq!(status, 201, "{sched}");
    let (_, list) = t.admin_get("/api/triggers").await;
    for shown in [&added, &sched, &list] {
        assert!(
            !shown.to_string().contains("s3cret"),
            "a secret shows: {shown}"
        );
    }
    assert_eq!(
        added["config"]["properties"]["ssl.keystore.password"],
        "***"
    );
    assert_eq!(added["config"]["properties"]["fetch.max.bytes"], "1048576");
    assert_eq!(sched["config"]["args"]["targets"][0]["password"], "***");
    assert_eq!(sched["config"]["args"]["targets"][0]["host"], "db");
    // librdkafka's refusal names the property, not its value.
    let (status, body) = send(t.admin_req(Method::POST, "/api/triggers").json(&json!({
        "name": "oidc", "kind": "kafka", "runnable": "echo",
        "brokers": ["127.0.0.1:9"], "topics": ["t"],
        "properties": {"sasl.oauthbearer.client.secret": "oidc-s3cret"}
    })))
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(!body.to_string().contains("s3cret"), "{body}");
    assert!(
        message(&body).contains("properties: `sasl.oauthbearer.client.secret`"),
        "{body}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_names_are_short_and_plain() {
    let t = TestService::start(BASE).await;
    let long = "a".repeat(10_000);
    for name in ["..", ".hidden", "-x", "a/b", "é", "", long.as_str()] {
        let (status, body) = send(t.admin_req(Method::POST, "/api/triggers").json(&json!({
            "name": name, "kind": "webhook", "runnable": "echo"
        })))
        .await;
        assert_eq!(status, 400, "{name:.20}: {body}");
        assert!(message(&body).starts_with("name: "), "{body}");
        assert!(message(&body).len() < 300, "the name is not echoed whole");
    }
    let ok = "a".repeat(64);
    for name in ["A1", "x.y_z-9", ok.as_str()] {
        let (status, body) = send(t.admin_req(Method::POST, "/api/triggers").json(&json!({
            "name": name, "kind": "webhook", "runnable": "echo"
        })))
        .await;
        assert_eq!(status, 201, "{name}: {body}");
    }
    let (status, _) = send(t.admin_req(Method::POST, "/api/triggers").json(&json!({
        "name": "a".repeat(65), "kind": "webhook", "runnable": "echo"
    })))
    .await;
    assert_eq!(status, 400);
    t.stop().await;
}

/// `millgate run` on the embedded default configuration in a temp dir, logging JSON.
async fn start_default() -> MillgateProcess {
    let mut mg = MillgateProcess::default_config();
    mg.global_args(&["--log-format", "json"])
        .env_remove("RUST_LOG");
    mg.start().await;
    mg
}

async fn status_with(admin: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{admin}/api/triggers"))
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// A quick-start install has no well-known admin token: the first start generates one into the
/// data directory, says where (never what), and later starts read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_config_generates_its_admin_token_once() {
    assert!(!millgate::DEFAULT_CONFIG.contains("change-me-admin"));
    let mut run = start_default().await;
    let file = run.data_dir().join("admin-token");
    let token = std::fs::read_to_string(&file).expect("token file written");
    let token = token.trim().to_string();
    assert!(
        token.len() >= 43,
        "32 random bytes or more: {}",
        token.len()
    );
    assert!(
        token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "URL-safe text"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }
    assert_eq!(status_with(&run.admin, "change-me-admin").await, 401);
    assert_eq!(status_with(&run.admin, &token).await, 200);
    // The CLI beside the data directory finds the token by itself.
    let out = tokio::process::Command::new(common::binary::BIN)
        .args(["triggers", "list", "--admin-url", &run.admin])
        .current_dir(run.dir())
        .env_remove("MILLGATE_ADMIN_TOKEN")
        .env_remove("MILLGATE_DATA")
        .output()
        .await
        .expect("cli runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello"));
    run.stop().await;
    let log = run.output();
    let said = format!("admin token generated: {}", file.display());
    assert_eq!(log.matches(&said).count(), 1, "{log}");
    assert!(!log.contains(&token), "the token itself is never logged");

    run.start().await;
    assert_eq!(status_with(&run.admin, &token).await, 200, "the same token");
    run.stop().await;
    let log = run.output();
    assert!(!log.contains("admin token generated"), "{log}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().trim(),
        token,
        "kept"
    );
}
