//! The admin CLI (`millgate triggers …`, `millgate jobs …`): the built binary against a real
//! service with its admin API, started in-process on free ports with its store in a temp dir
//! (`common::TestService`).

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::TestService;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const TOKEN: &str = "admin-s3cret";

struct Admin {
    service: TestService,
    /// `http://<admin addr>`
    url: String,
    /// `http://<ingress addr>`
    ingress: String,
    http: reqwest::Client,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self:?}"))
    }

    #[track_caller]
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "expected success:\n{self:?}");
        self
    }
}

/// Runs the built `millgate` with `args`, `stdin` on its standard input, and `env` as its
/// only `MILLGATE_ADMIN_*` / `MILLGATE_DATA` variables, in an empty directory (so no
/// `./data/admin-token` is found unless a test puts one there).
async fn millgate(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Out {
    let cwd = tempfile::tempdir().expect("tempdir");
    millgate_in(cwd.path(), args, env, stdin).await
}

async fn millgate_in(
    cwd: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
) -> Out {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_millgate"));
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("MILLGATE_ADMIN_URL")
        .env_remove("MILLGATE_ADMIN_TOKEN")
        .env_remove("MILLGATE_DATA")
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("millgate binary starts");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).await.expect("write stdin");
        drop(pipe);
    }
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("millgate {args:?} did not finish within 30s"))
        .expect("millgate output");
    Out {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

impl Admin {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
sync_timeout = "5s"

[store]
path = "{}"

[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"

[runnables.echo]
kind = "echo"

[[triggers]]
name = "hello"
kind = "webhook"
runnable = "echo"
"#,
            dir.path().join("data").display()
        );
        let service = TestService::start_in(dir, &text).await;
        let admin = Self {
            url: service.admin.clone(),
            ingress: service.base.clone(),
            http: service.client.clone(),
            service,
        };
        admin.wait_ready().await;
        admin
    }

    /// `GET /readyz` answers 200 once every enabled trigger runs.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self
                .http
                .get(format!("{}/readyz", self.url))
                .send()
                .await
                .map(|r| r.status().as_u16());
            if matches!(status, Ok(200)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not ready within 10s: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `millgate <group> <args…> --admin-url <admin> --token <TOKEN>`
    async fn cli(&self, args: &[&str]) -> Out {
        self.cli_stdin(args, None).await
    }

    async fn cli_stdin(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let mut all = args.to_vec();
        all.extend(["--admin-url", &self.url, "--token", TOKEN]);
        millgate(&all, &[], stdin).await
    }

    async fn api_get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("admin request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Polls `millgate jobs get <id> --json` until the job is `status`.
    async fn wait_job(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = self.cli(&["jobs", "get", id, "--json"]).await;
            if out.code == 0 && out.json()["status"] == status {
                return out.json();
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not {status} within 15s:\n{out:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        self.service.stop().await;
    }
}

/// The row of `name` in a table (the line whose first column is `name`).
fn row<'a>(table: &'a str, name: &str) -> Option<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_list_add_disable_remove() {
    let a = Admin::start().await;

    // The table: a header, then the config trigger.
    let out = a.cli(&["triggers", "list"]).await.ok();
    let header: Vec<&str> = out
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "KIND",
            "MODE",
            "STATE",
            "IN_FLIGHT",
            "RESTARTS",
            "RATE/s",
            "LAST_ERROR"
        ],
        "{out:?}"
    );
    let hello: Vec<&str> = row(&out.stdout, "hello")
        .unwrap_or_else(|| panic!("no hello row:\n{out:?}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        hello[..4],
        ["hello", "webhook", "async", "running"],
        "{out:?}"
    );

    let out = a.cli(&["triggers", "get", "hello"]).await.ok();
    for expected in [
        "name:",
        "hello",
        "source:",
        "config",
        "[[triggers]]",
        "runnable = \"echo\"",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?}:\n{out:?}"
        );
    }

    // Add from a TOML file holding one [[triggers]] entry.
    let file = a.service.dir.path().join("orders.toml");
    std::fs::write(
        &file,
        "[[triggers]]\nname = \"orders\"\nkind = \"webhook\"\nrunnable = \"echo\"\ntoken = \"t0k\"\n",
    )
    .unwrap();
    let out = a
        .cli(&["triggers", "add", file.to_str().unwrap()])
        .await
        .ok();
    assert!(out.stdout.contains("orders"), "{out:?}");
    let out = a.cli(&["triggers", "list"]).await.ok();
    assert!(row(&out.stdout, "orders").is_some(), "{out:?}");
    let (status, body) = a.api_get("/api/triggers").await;
    assert_eq!(status, 200, "{body}");
    let orders = body["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "orders")
        .unwrap_or_else(|| panic!("orders not in GET /api/triggers: {body}"))
        .clone();
    assert_eq!(orders["source"], "api", "{orders}");
    assert_eq!(orders["config"]["token"], "***", "{orders}");

    // Add from stdin, as bare keys; --json prints the API's view.
    let out = a
        .cli_stdin(
            &["triggers", "add", "-", "--json"],
            Some("name = \"bare\"\nkind = \"webhook\"\nrunnable = \"echo\"\nmode = \"sync\"\n"),
        )
        .await
        .ok();
    assert_eq!(out.json()["name"], "bare", "{out:?}");
    assert_eq!(out.json()["mode"], "sync", "{out:?}");

    // Invalid: exit 1, the API's validation message and status on stderr.
    let bad = a.service.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"bad\"\nkind = \"webhook\"\nrunnable = \"nope\"\n",
    )
    .unwrap();
    let out = a.cli(&["triggers", "add", bad.to_str().unwrap()]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("unknown runnable `nope`"), "{out:?}");
    assert!(out.stderr.contains("422"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let out = a.cli(&["triggers", "list"]).await.ok();
    assert!(row(&out.stdout, "bad").is_none(), "{out:?}");

    // A name config.toml owns: 409.
    let dup = a.service.dir.path().join("dup.toml");
    std::fs::write(
        &dup,
        "name = \"hello\"\nkind = \"webhook\"\nrunnable = \"echo\"\n",
    )
    .unwrap();
    let out = a.cli(&["triggers", "add", dup.to_str().unwrap()]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("409"), "{out:?}");

    // A missing file: exit 1, named.
    let out = a.cli(&["triggers", "add", "/nonexistent/x.toml"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("/nonexistent/x.toml"), "{out:?}");

    // Disable → disabled (and the webhook answers 503); enable → back.
    let out = a.cli(&["triggers", "disable", "orders"]).await.ok();
    assert!(out.stdout.contains("disabled"), "{out:?}");
    let out = a.cli(&["triggers", "get", "orders", "--json"]).await.ok();
    assert_eq!(out.json()["state"], "disabled", "{out:?}");
    assert_eq!(out.json()["enabled"], false, "{out:?}");
    let out = a.cli(&["triggers", "list"]).await.ok();
    let cols: Vec<&str> = row(&out.stdout, "orders")
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(cols[3], "disabled", "{out:?}");
    let resp = a
        .http
        .post(format!("{}/hooks/orders", a.ingress))
        .bearer_auth("t0k")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let out = a
        .cli(&["triggers", "enable", "orders", "--json"])
        .await
        .ok();
    assert_eq!(out.json()["enabled"], true, "{out:?}");
    assert_ne!(out.json()["state"], "disabled", "{out:?}");

    // Suspend / resume.
    let out = a
        .cli(&["triggers", "suspend", "orders", "--json"])
        .await
        .ok();
    assert_eq!(out.json()["state"], "suspended", "{out:?}");
    assert_eq!(out.json()["suspended"], true, "{out:?}");
    let out = a
        .cli(&["triggers", "resume", "orders", "--json"])
        .await
        .ok();
    assert_eq!(out.json()["suspended"], false, "{out:?}");
    assert_ne!(out.json()["state"], "suspended", "{out:?}");

    // Remove → gone; again → 404; a config.toml trigger → 409.
    let out = a.cli(&["triggers", "rm", "orders"]).await.ok();
    assert!(out.stdout.contains("orders"), "{out:?}");
    let out = a.cli(&["triggers", "list"]).await.ok();
    assert!(row(&out.stdout, "orders").is_none(), "{out:?}");
    let (status, _) = a.api_get("/api/triggers/orders").await;
    assert_eq!(status, 404);
    let out = a.cli(&["triggers", "rm", "orders"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("404"), "{out:?}");
    let out = a.cli(&["triggers", "rm", "hello"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("409"), "{out:?}");

    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_list_get_replay() {
    let a = Admin::start().await;

    let resp = a
        .http
        .post(format!("{}/hooks/hello", a.ingress))
        .json(&json!({"name": "Ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let body: Value = resp.json().await.unwrap();
    let id = body["job_id"].as_str().expect("job_id").to_string();

    let job = a.wait_job(&id, "succeeded").await;
    assert_eq!(job["args"], json!({"name": "Ada"}), "{job}");
    assert_eq!(job["result"], json!({"name": "Ada"}), "{job}");

    // The list, as JSON and as a table, with filters.
    let out = a.cli(&["jobs", "list", "--json"]).await.ok();
    let jobs = out.json()["jobs"].as_array().cloned().unwrap_or_default();
    assert!(jobs.iter().any(|j| j["job_id"] == id.as_str()), "{out:?}");
    let out = a
        .cli(&[
            "jobs",
            "list",
            "--trigger",
            "hello",
            "--status",
            "succeeded",
            "--limit",
            "10",
        ])
        .await
        .ok();
    let header: Vec<&str> = out
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["JOB_ID", "TRIGGER", "STATUS", "ATTEMPTS", "DURATION", "CREATED"],
        "{out:?}"
    );
    let cols: Vec<&str> = row(&out.stdout, &id)
        .unwrap_or_else(|| panic!("no row for {id}:\n{out:?}"))
        .split_whitespace()
        .collect();
    assert_eq!(cols[1..4], ["hello", "succeeded", "1"], "{out:?}");
    let out = a
        .cli(&["jobs", "list", "--status", "dead_lettered"])
        .await
        .ok();
    assert!(!out.stdout.contains(&id), "{out:?}");
    let out = a.cli(&["jobs", "list", "--limit", "0"]).await;
    assert_eq!(out.code, 2, "a usage error:\n{out:?}");

    // The readable view.
    let out = a.cli(&["jobs", "get", &id]).await.ok();
    for expected in [
        id.as_str(),
        "succeeded",
        "hello",
        "args:",
        "\"Ada\"",
        "result:",
        "timeline:",
        "queued",
        "started",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?}:\n{out:?}"
        );
    }

    // Replay: a new job of the same trigger and args.
    let out = a.cli(&["jobs", "replay", &id, "--json"]).await.ok();
    let new_id = out.json()["job_id"]
        .as_str()
        .expect("new job_id")
        .to_string();
    assert_ne!(new_id, id, "{out:?}");
    assert_eq!(out.json()["replay_of"], id.as_str(), "{out:?}");
    let replayed = a.wait_job(&new_id, "succeeded").await;
    assert_eq!(replayed["replay_of"], id.as_str(), "{replayed}");
    assert_eq!(replayed["args"], json!({"name": "Ada"}), "{replayed}");
    let out = a.cli(&["jobs", "replay", &id]).await.ok();
    assert!(out.stdout.contains("new job"), "{out:?}");

    // Unknown and malformed ids.
    let out = a.cli(&["jobs", "get", "not-a-job-id"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("400"), "{out:?}");

    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_url_and_connection_errors() {
    let a = Admin::start().await;

    // Options from the environment, and before the subcommand.
    let out = millgate(
        &["triggers", "list"],
        &[
            ("MILLGATE_ADMIN_URL", &a.url),
            ("MILLGATE_ADMIN_TOKEN", TOKEN),
        ],
        None,
    )
    .await
    .ok();
    assert!(row(&out.stdout, "hello").is_some(), "{out:?}");
    let out = millgate(
        &[
            "jobs",
            "--admin-url",
            &a.url,
            "--token",
            TOKEN,
            "--json",
            "list",
        ],
        &[],
        None,
    )
    .await
    .ok();
    assert!(out.json()["jobs"].is_array(), "{out:?}");

    // Wrong token: exit 1, 401 named.
    let out = millgate(
        &[
            "triggers",
            "list",
            "--admin-url",
            &a.url,
            "--token",
            "wrong",
        ],
        &[],
        None,
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("401"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");

    // No token at all: exit 2, says how to give one and which token file it looked for.
    let out = millgate(&["triggers", "list", "--admin-url", &a.url], &[], None).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--token"), "{out:?}");
    assert!(out.stderr.contains("MILLGATE_ADMIN_TOKEN"), "{out:?}");
    assert!(out.stderr.contains("./data/admin-token"), "{out:?}");
    let empty = tempfile::tempdir().expect("tempdir");
    let data = empty.path().display().to_string();
    let out = millgate(
        &["triggers", "list", "--admin-url", &a.url],
        &[("MILLGATE_DATA", &data)],
        None,
    )
    .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("$MILLGATE_DATA/admin-token"), "{out:?}");
    assert!(out.stderr.contains(&data), "{out:?}");

    // The token file of a local millgate: in $MILLGATE_DATA, else ./data.
    std::fs::write(empty.path().join("admin-token"), format!("{TOKEN}\n")).unwrap();
    let out = millgate(
        &["triggers", "list", "--admin-url", &a.url],
        &[("MILLGATE_DATA", &data)],
        None,
    )
    .await
    .ok();
    assert!(row(&out.stdout, "hello").is_some(), "{out:?}");
    let cwd = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(cwd.path().join("data")).unwrap();
    std::fs::write(cwd.path().join("data/admin-token"), TOKEN).unwrap();
    let out = millgate_in(
        cwd.path(),
        &["triggers", "list", "--admin-url", &a.url],
        &[],
        None,
    )
    .await
    .ok();
    assert!(row(&out.stdout, "hello").is_some(), "{out:?}");
    // An explicit token wins over the file.
    let out = millgate_in(
        cwd.path(),
        &[
            "triggers",
            "list",
            "--admin-url",
            &a.url,
            "--token",
            "wrong",
        ],
        &[],
        None,
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");

    // Nothing listening: exit 1, the URL named.
    let free = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dead = format!("http://{free}");
    let out = millgate(
        &["triggers", "list", "--admin-url", &dead, "--token", TOKEN],
        &[],
        None,
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains(&dead), "{out:?}");
    assert!(out.stderr.contains("connection refused"), "{out:?}");

    // The ingress listener is not the admin API.
    let out = millgate(
        &[
            "triggers",
            "list",
            "--admin-url",
            &a.ingress,
            "--token",
            TOKEN,
        ],
        &[],
        None,
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("404"), "{out:?}");

    // A malformed URL is a usage error.
    let out = millgate(
        &[
            "triggers",
            "list",
            "--admin-url",
            "localhost",
            "--token",
            TOKEN,
        ],
        &[],
        None,
    )
    .await;
    assert_eq!(out.code, 2, "{out:?}");

    a.stop().await;
}
