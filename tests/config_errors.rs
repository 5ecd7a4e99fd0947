//! `millgate check --config <file>` on broken files: exit code 1 and one message per problem
//! that names the file, the line and the key. Runs the built binary, as an operator would.

mod common;

use std::path::PathBuf;
use std::process::Command;

struct Checked {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    file: String,
}

/// Writes `text` to `<tempdir>/<name>` and runs `millgate check --config` on it.
fn check(name: &str, text: &str) -> Checked {
    let dir = tempfile::tempdir().expect("tempdir");
    let path: PathBuf = dir.path().join(name);
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_millgate"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .env_remove("NOPE_NOT_SET")
        .output()
        .expect("run millgate");
    Checked {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        file: path.display().to_string(),
    }
}

/// 1-based line of the only line of `text` containing `marker`.
fn line_with(text: &str, marker: &str) -> usize {
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(marker))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "marker {marker:?} must be on exactly one line"
    );
    lines[0]
}

/// Exit code 1, and a stderr line `<file>:<line>: ` that names `key` and contains `words`.
/// Returns that line.
fn assert_error(c: &Checked, line: usize, key: &str, words: &[&str]) -> String {
    assert_eq!(
        c.code,
        Some(1),
        "exit code; stdout:\n{}\nstderr:\n{}",
        c.stdout,
        c.stderr
    );
    let prefix = format!("{}:{line}: ", c.file);
    let found = c
        .stderr
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no message at `{prefix}` in stderr:\n{}", c.stderr));
    assert!(found.contains(key), "key `{key}` not named in: {found}");
    for w in words {
        assert!(found.contains(w), "`{w}` missing from: {found}");
    }
    assert!(
        c.stdout.is_empty(),
        "nothing is listed for a bad file:\n{}",
        c.stdout
    );
    found.to_string()
}

const RUNNABLE: &str = r#"[runnables.echo]
command = ["cat"]
"#;

#[test]
fn unknown_top_level_key() {
    let text = format!("{RUNNABLE}\n[serverr]\nlisten = \"127.0.0.1:0\"\n");
    let c = check("top.toml", &text);
    assert_error(
        &c,
        line_with(&text, "[serverr]"),
        "serverr",
        &["unknown field", "expected one of", "`server`"],
    );

    let text = format!("[server]\nlisten = \"127.0.0.1:0\"\nlistn = \"x\"\n\n{RUNNABLE}");
    let c = check("server.toml", &text);
    assert_error(
        &c,
        line_with(&text, "listn"),
        "server.listn",
        &["unknown field", "`listen`"],
    );
}

#[test]
fn unknown_key_in_a_trigger() {
    let text = format!(
        r#"{RUNNABLE}
[[triggers]]
name = "first"
kind = "http"
path = "/first"
runnable = "echo"

[[triggers]]
name = "second"
kind = "http"
path = "/second"
runnable = "echo"
colour = "blue"
"#
    );
    let c = check("trigger_key.toml", &text);
    // The key's own line, in the second entry (not the first entry of the array).
    let m = assert_error(
        &c,
        line_with(&text, "colour"),
        "triggers[1] (second).colour",
        &["unknown field `colour`", "kind http"],
    );
    assert!(!m.contains("first"), "{m}");

    // Inside an inline table: the line of that table, named by its dotted key.
    let text = format!(
        r#"{RUNNABLE}
[[triggers]]
name = "a"
kind = "http"
path = "/a"
runnable = "echo"
auth = {{ type = "bearer", tokn = "x" }}
"#
    );
    let c = check("auth_key.toml", &text);
    assert_error(
        &c,
        line_with(&text, "tokn"),
        "triggers[0] (a).auth.tokn",
        &["unknown field", "`token`"],
    );
}

#[test]
fn unknown_trigger_kind_lists_the_known_kinds() {
    let text = format!(
        r#"{RUNNABLE}
[[triggers]]
name = "pigeon"
kind = "carrier-pigeon"
runnable = "echo"
"#
    );
    let c = check("kind.toml", &text);
    assert_error(
        &c,
        line_with(&text, "kind ="),
        "triggers[0] (pigeon).kind",
        &["unknown trigger kind `carrier-pigeon`", "webhook", "http"],
    );
}

#[test]
fn runnable_referenced_but_not_defined() {
    let text = format!(
        r#"{RUNNABLE}
[runnables.other]
url = "http://127.0.0.1:9/x"

[[triggers]]
name = "a"
kind = "webhook"
token = "t"
runnable = "ecko"
"#
    );
    let c = check("runnable.toml", &text);
    assert_error(
        &c,
        line_with(&text, "runnable = "),
        "triggers[0] (a).runnable",
        &["unknown runnable `ecko`", "echo, other"],
    );
}

#[test]
fn duplicate_trigger_name() {
    let text = format!(
        r#"{RUNNABLE}
[[triggers]]
name = "same"
kind = "webhook"
token = "t"
runnable = "echo"

[[triggers]]
kind = "webhook"
token = "t"
runnable = "echo"
name = "same"
"#
    );
    let c = check("dup.toml", &text);
    // The second definition is the duplicate: the last `name =` line.
    let line = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("name ="))
        .map(|(i, _)| i + 1)
        .last()
        .unwrap();
    assert_error(
        &c,
        line,
        "triggers[1] (same).name",
        &["duplicate trigger name `same`"],
    );
    assert_eq!(c.stderr.lines().count(), 1, "{}", c.stderr);
}

#[test]
fn conflicting_http_routes() {
    let text = format!(
        r#"{RUNNABLE}
[[triggers]]
name = "by-x"
kind = "http"
method = "post"
path = "/a/:x"
runnable = "echo"

[[triggers]]
name = "by-y"
kind = "http"
method = "POST"
path = "/a/:y"
runnable = "echo"

[[triggers]]
name = "get-y"
kind = "http"
method = "get"
path = "/a/:z"
runnable = "echo"
"#
    );
    let c = check("routes.toml", &text);
    assert_error(
        &c,
        line_with(&text, "/a/:y"),
        "triggers[1] (by-y).path",
        &["conflicts", "/a/:x", "by-x"],
    );
    // The GET route on the same path is not a conflict.
    assert_eq!(c.stderr.lines().count(), 1, "{}", c.stderr);
}

#[test]
fn invalid_jq_in_preprocessor() {
    let text = format!(
        r#"{RUNNABLE}
[[triggers]]
name = "a"
kind = "http"
path = "/a"
runnable = "echo"
preprocessor = {{ jq = '{{a: .b' }}
"#
    );
    let c = check("jq.toml", &text);
    assert_error(
        &c,
        line_with(&text, "preprocessor"),
        "triggers[0] (a).preprocessor.jq",
        &["cannot parse jq filter", "{a: .b"],
    );
}

#[test]
fn missing_environment_variable() {
    let text = format!(
        r#"# ${{NOPE_NOT_SET}} in a comment is left alone
{RUNNABLE}
[[triggers]]
name = "a"
kind = "webhook"
runnable = "echo"
token = "${{NOPE_NOT_SET}}"
"#
    );
    let c = check("env.toml", &text);
    assert_error(
        &c,
        line_with(&text, "token ="),
        "NOPE_NOT_SET",
        &[
            "triggers[0] (a).token",
            "is not set",
            "${NOPE_NOT_SET:-default}",
        ],
    );
}

#[test]
fn bad_duration() {
    let text = r#"[runnables.echo]
command = ["cat"]
timeout = "soon"
"#;
    let c = check("duration.toml", text);
    assert_error(
        &c,
        line_with(text, "soon"),
        "runnables.echo.timeout",
        &[
            "\"soon\"",
            "expected a duration",
            r#"such as "250ms", "30s" or "5m""#,
        ],
    );

    // In a trigger entry (parsed on its own) and inside an inline table.
    let text = format!(
        r#"{RUNNABLE}
[router]
retry = {{ attempts = 2, initial = "1s", max = "forever" }}
"#
    );
    let c = check("retry.toml", &text);
    assert_error(
        &c,
        line_with(&text, "forever"),
        "router.retry.max",
        &["expected a duration", r#""250ms", "30s" or "5m""#],
    );

    let text = format!(
        r#"{RUNNABLE}
[[triggers]]
name = "a"
kind = "http"
path = "/a"
runnable = "echo"
sync_timeout = "later"
"#
    );
    let c = check("trigger_duration.toml", &text);
    assert_error(
        &c,
        line_with(&text, "later"),
        "triggers[0] (a).sync_timeout",
        &[
            "\"later\"",
            "expected a duration",
            r#""250ms", "30s" or "5m""#,
        ],
    );
}

/// A trigger added through the admin API is checked by the same code as config.toml, with the
/// same explanation of durations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_duration_through_the_admin_api() {
    let t = common::TestService::start(RUNNABLE).await;
    let resp = t
        .admin_req(reqwest::Method::POST, "/api/triggers")
        .json(&serde_json::json!({
            "name": "late", "kind": "webhook", "runnable": "echo", "sync_timeout": "soonish"
        }))
        .send()
        .await
        .expect("POST /api/triggers");
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    t.stop().await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    for words in [
        "sync_timeout",
        "\"soonish\"",
        r#"such as "250ms", "30s" or "5m""#,
    ] {
        assert!(message.contains(words), "`{words}` missing from: {message}");
    }
}

#[test]
fn every_problem_is_reported_with_its_own_line() {
    let text = format!(
        r#"[server]
listen = "nowhere"

{RUNNABLE}
[runnables.lazy]
command = ["true"]
concurrency = 0

[[triggers]]
name = "a"
kind = "webhook"
token = "t"
runnable = "missing"

[[triggers]]
name = "b"
kind = "http"
method = "fetch"
path = "/b"
runnable = "echo"
"#
    );
    let c = check("many.toml", &text);
    assert_error(
        &c,
        line_with(&text, "listen"),
        "server.listen",
        &["`nowhere` is not an address"],
    );
    assert_error(
        &c,
        line_with(&text, "concurrency"),
        "runnables.lazy.concurrency",
        &["at least 1"],
    );
    assert_error(
        &c,
        line_with(&text, "\"missing\""),
        "triggers[0] (a).runnable",
        &["unknown runnable `missing`"],
    );
    assert_error(
        &c,
        line_with(&text, "fetch"),
        "triggers[1] (b).method",
        &["`fetch` is not one of"],
    );
    assert_eq!(c.stderr.lines().count(), 4, "{}", c.stderr);
}

#[test]
fn valid_file_lists_every_trigger_and_runnable() {
    let text = r#"
[runnables.echo]
command = ["cat"]
timeout = "5s"

[runnables.remote]
url = "http://127.0.0.1:9/run"
concurrency = 2

[[triggers]]
name = "hook-one"
kind = "webhook"
runnable = "echo"
token = "t"

[[triggers]]
name = "open-hook"
kind = "webhook"
runnable = "remote"

[[triggers]]
name = "orders-route"
kind = "http"
method = "put"
path = "/orders/:id/*rest"
mode = "sync"
runnable = "remote"
auth = { type = "signature", preset = "stripe", secret = "s", tolerance = "2m" }
preprocessor = { jq = '{id: .params.id}' }
"#;
    let c = check("good.toml", text);
    assert_eq!(c.code, Some(0), "stderr:\n{}", c.stderr);
    for name in ["echo", "remote", "hook-one", "open-hook", "orders-route"] {
        assert!(
            c.stdout.contains(name),
            "`{name}` not listed:\n{}",
            c.stdout
        );
    }
    assert!(c.stdout.contains("PUT /orders/:id/*rest"), "{}", c.stdout);
    assert!(c.stdout.contains("signature:stripe"), "{}", c.stdout);
    assert!(c.stdout.contains("POST /hooks/hook-one"), "{}", c.stdout);
    // The open webhook is valid but warned about; nothing else is.
    assert_eq!(c.stderr.lines().count(), 1, "{}", c.stderr);
    assert!(
        c.stderr.contains("warning") && c.stderr.contains("open-hook"),
        "{}",
        c.stderr
    );
}

#[test]
fn embedded_default_config_checks() {
    let out = Command::new(env!("CARGO_BIN_EXE_millgate"))
        .arg("check")
        .env_remove("MILLGATE_LISTEN")
        .env_remove("MILLGATE_DATA")
        .env_remove("MILLGATE_HELLO_TOKEN")
        .output()
        .expect("run millgate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["echo", "hello", "greet", "POST /greet/:name"] {
        assert!(stdout.contains(name), "`{name}` not listed:\n{stdout}");
    }
}

#[test]
fn unreadable_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_millgate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{}: cannot read", path.display())),
        "{stderr}"
    );
}

#[test]
fn zero_limits_are_refused() {
    let text = r#"[server]
body_limit = 0
sync_timeout = "0s"

[store]
dedup_ttl = "0m"
max_jobs = 0
cache_capacity = 0

[router]
runners = 0
max_in_flight = 0

[runnables.echo]
command = ["cat"]
timeout = "0ms"

[[triggers]]
name = "h"
kind = "http"
path = "/h"
runnable = "echo"
sync_timeout = "0h"
"#;
    let c = check("zeros.toml", text);
    for (marker, key, words) in [
        ("body_limit", "server.body_limit", "above zero"),
        ("\"0s\"", "server.sync_timeout", "above zero"),
        ("\"0m\"", "store.dedup_ttl", "above zero"),
        ("max_jobs", "store.max_jobs", "above zero"),
        ("cache_capacity", "store.cache_capacity", "above zero"),
        ("runners", "router.runners", "at least 1"),
        ("max_in_flight", "router.max_in_flight", "at least 1"),
        ("\"0ms\"", "runnables.echo.timeout", "above zero"),
        ("\"0h\"", "triggers[0] (h).sync_timeout", "longer than 0s"),
    ] {
        assert_error(&c, line_with(text, marker), key, &[words]);
    }
    assert_eq!(c.stderr.lines().count(), 9, "{}", c.stderr);
}

#[test]
fn trigger_names_are_short_and_plain() {
    let long = "n".repeat(10_000);
    for name in ["..", "-lead", "a b", long.as_str()] {
        let text = format!(
            r#"{RUNNABLE}
[[triggers]]
kind = "webhook"
token = "t"
runnable = "echo"
name = "{name}"
"#
        );
        let c = check("names.toml", &text);
        let line = assert_error(
            &c,
            line_with(&text, "name ="),
            ".name",
            &[
                "is not a valid name",
                "1 to 64",
                "starting with a letter or digit",
            ],
        );
        assert!(
            line.len() < 400,
            "the name is not echoed whole: {line:.200}"
        );
    }
    let text = format!(
        "{RUNNABLE}\n[[triggers]]\nkind = \"webhook\"\ntoken = \"t\"\nrunnable = \"echo\"\nname = \"{}\"\n",
        "n".repeat(64)
    );
    assert_eq!(check("ok.toml", &text).code, Some(0));
}

#[test]
fn an_empty_admin_token_is_refused() {
    let text = format!(
        r#"[admin]
token = ""
{RUNNABLE}"#
    );
    let c = check("admin.toml", &text);
    assert_error(
        &c,
        line_with(&text, "token"),
        "admin.token",
        &["must not be empty", "token_file"],
    );
    // Without `token`, the token file: valid.
    let text = format!("[admin]\nlisten = \"127.0.0.1:8081\"\n{RUNNABLE}");
    assert_eq!(check("admin_ok.toml", &text).code, Some(0));
}

#[test]
fn an_unknown_durability_names_the_choices() {
    let text = "[store]\ndurability = \"never\"\n";
    let c = check("durability.toml", text);
    assert_error(
        &c,
        line_with(text, "never"),
        "store.durability",
        &["fsync", "os"],
    );
}

#[test]
fn sqs_limits_name_their_keys() {
    let text = r#"[runnables.echo]
kind = "echo"

[[triggers]]
name = "q"
kind = "sqs"
runnable = "echo"
queue_url = "orders"
batch = 11
wait_time = "30s"
visibility_timeout = "1s"
delete = "later"
"#;
    let c = check("sqs.toml", text);
    assert_error(
        &c,
        line_with(text, "later"),
        "triggers[0] (q).delete",
        &["after_run", "on_accept"],
    );
    let text = text.replace("delete = \"later\"\n", "");
    let c = check("sqs.toml", &text);
    for (marker, key, words) in [
        ("queue_url", "triggers[0] (q).queue_url", "URL"),
        ("batch", "triggers[0] (q).batch", "between 1 and 10"),
        ("wait_time", "triggers[0] (q).wait_time", "at most 20s"),
        (
            "visibility_timeout",
            "triggers[0] (q).visibility_timeout",
            "between 2s and 12h",
        ),
    ] {
        assert_error(&c, line_with(&text, marker), key, &[words]);
    }
}

#[test]
fn pubsub_keys_name_their_problem() {
    let text = r#"[runnables.echo]
kind = "echo"

[[triggers]]
name = "p"
kind = "pubsub"
runnable = "echo"
project = "mine"
subscription = "projects/theirs/subscriptions/s"
create_subscription = true
ack_deadline = "5s"
"#;
    let c = check("pubsub.toml", text);
    for (marker, key, words) in [
        ("theirs", "triggers[0] (p).subscription", "of this project"),
        // A key that is missing: the trigger's table is the line.
        ("[[triggers]]", "triggers[0] (p).topic", "needed to create"),
        (
            "ack_deadline",
            "triggers[0] (p).ack_deadline",
            "between 10s and 600s",
        ),
    ] {
        assert_error(&c, line_with(text, marker), key, &[words]);
    }
}

#[test]
fn pubsub_push_keys_name_their_problem() {
    let text = r#"[runnables.echo]
kind = "echo"

[[triggers]]
name = "route"
kind = "http"
runnable = "echo"
path = "/push"

[[triggers]]
name = "p"
kind = "pubsub_push"
runnable = "echo"
path = "/push"
certs_url = "ftp://keys.example.com/certs"
subscription = "orders"
"#;
    let c = check("pubsub_push.toml", text);
    let table = text
        .lines()
        .enumerate()
        .filter(|(_, l)| *l == "[[triggers]]")
        .map(|(i, _)| i + 1)
        .nth(1)
        .expect("second trigger");
    // Two keys missing: two messages on the trigger's table line.
    for (key, words) in [
        ("triggers[1] (p).audience", "needed to verify"),
        ("triggers[1] (p).email", "service account"),
    ] {
        let prefix = format!("{}:{table}: {key}", c.file);
        let found = c.stderr.lines().find(|l| l.starts_with(&prefix));
        assert!(
            found.is_some_and(|l| l.contains(words)),
            "no `{prefix}` with `{words}` in:\n{}",
            c.stderr
        );
    }
    for (line, key, words) in [
        (
            line_with(text, "ftp://"),
            "triggers[1] (p).certs_url",
            "not an http(s) URL",
        ),
        (
            line_with(text, "subscription = "),
            "triggers[1] (p).subscription",
            "projects/<project>/subscriptions/<id>",
        ),
    ] {
        assert_error(&c, line, key, &[words]);
    }
    // The route is claimed by the http trigger already.
    assert!(
        c.stderr.contains("triggers[1] (p).path"),
        "route conflict: {}",
        c.stderr
    );
}

#[test]
fn postgres_keys_name_their_problem() {
    let text = r#"[runnables.echo]
kind = "echo"

[[triggers]]
name = "cdc"
kind = "postgres"
runnable = "echo"
connection = "host=db user=app sslmode=require"
slot = "Not-A-Slot"
tables = ["orders", { table = "public.t", where = "a); DROP TABLE t; --" }]
granularity = "row"
status_interval = "0s"
"#;
    let c = check("postgres.toml", text);
    for (marker, key, words) in [
        ("sslmode", "triggers[0] (cdc).connection", "TLS"),
        ("Not-A-Slot", "triggers[0] (cdc).slot", "lower-case"),
        (
            "status_interval",
            "triggers[0] (cdc).status_interval",
            "between 1s and 10m",
        ),
    ] {
        assert_error(&c, line_with(text, marker), key, &[words]);
    }
    // Both bad tables are named, on the `tables` line.
    for key in ["triggers[0] (cdc).tables[0]", "triggers[0] (cdc).tables[1]"] {
        assert!(c.stderr.contains(key), "{key} not named:\n{}", c.stderr);
    }
}
