//! The dashboard in a real headless Chromium: a real millgate (ingress + admin listener, sled in
//! a temp dir) and `tests/dashboard/e2e.mjs` (playwright-core driving Debian's chromium) doing
//! what an operator would — log in, add a trigger, watch its job live, disable it, read the
//! inline error of a bad trigger, replay a dead letter, read the schedules' and polls' fire
//! times, counters and saved state and edit a poll's state. `scripts/services.sh` installs
//! chromium and the script's npm packages.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::TestService;

const TOKEN: &str = "dashboard-e2e-admin-token";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser scenario; each of its steps has its own 15 s limit.
const E2E_TIMEOUT: Duration = Duration::from_secs(240);

fn config(dir: &Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
sync_timeout = "5s"

[store]
path = "{data}"

[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"

[runnables.echo]
kind = "echo"

[runnables.fail]
command = ["sh", "-c", "echo 'boom: always fails' >&2; exit 3"]

# Fails at once, without retries: its jobs become dead letters.
[[triggers]]
name = "cfg-fail"
kind = "webhook"
runnable = "fail"
retry = {{ attempts = 1, initial = "100ms", max = "100ms" }}

[runnables.slow]
command = ["sleep", "30"]

# A poll runnable: its first poll saves {{"cursor": 1}}; later ones keep whatever is saved.
[runnables.feed]
command = ["sh", "-c", """read -r args; case "$args" in *null*) echo '{{"items": [], "state": {{"cursor": 1}}}}' ;; *) echo '{{"items": []}}' ;; esac"""]

# Fires at 02:30 UTC: the test moves its saved last fire three days back before a restart, so
# the fire times in between count as missed.
[[triggers]]
name = "cfg-nightly"
kind = "schedule"
runnable = "echo"
cron = "0 30 2 * * *"

# Fires every second; its job runs 30 s, so the fire times meanwhile are skipped (overlap).
[[triggers]]
name = "cfg-tick"
kind = "schedule"
runnable = "slow"
cron = "* * * * * *"
overlap = "skip"

[[triggers]]
name = "cfg-feed"
kind = "poll"
runnable = "echo"
poll_runnable = "feed"
cron = "* * * * * *"
"#,
        data = dir.join("data").display()
    )
}

fn setup_hint() -> &'static str {
    "run scripts/services.sh (it installs Debian's chromium and the npm packages of tests/dashboard)"
}

/// Node, npm and chromium are there, and `tests/dashboard/node_modules` is installed (`npm ci`
/// when it is missing). Panics, naming what is missing, otherwise: this test is never skipped.
async fn prepare(e2e_dir: &Path) -> PathBuf {
    let chromium =
        std::env::var_os("CHROMIUM_PATH").map_or_else(|| PathBuf::from(CHROMIUM), PathBuf::from);
    assert!(
        chromium.exists(),
        "chromium not found at {}: {}",
        chromium.display(),
        setup_hint()
    );
    for tool in ["node", "npm"] {
        let found = tokio::process::Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        assert!(found, "`{tool}` not found on PATH: {}", setup_hint());
    }
    if !e2e_dir.join("node_modules/playwright-core").exists() {
        let out = tokio::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(e2e_dir)
            .output()
            .await
            .expect("npm runs");
        assert!(
            out.status.success(),
            "`npm ci` in {} failed ({}):\n{}\n{}\n{}",
            e2e_dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            setup_hint()
        );
    }
    chromium
}

async fn start(dir: tempfile::TempDir) -> TestService {
    let text = config(dir.path());
    TestService::start_in(dir, &text).await
}

async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    client
        .get(url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let e2e_dir = root.join("tests/dashboard");
    let chromium = prepare(&e2e_dir).await;

    let client = reqwest::Client::new();
    let t = start(tempfile::tempdir().expect("tempdir")).await;
    let admin = t.admin.clone();
    // cfg-nightly's last fire, three days back: the restart finds its fire times since then
    // outside the catch-up window and counts them as missed.
    let state = format!("{admin}/api/triggers/cfg-nightly/state");
    let mut tries = 0;
    while get_json(&client, &state).await["state"]["last_fire"].is_null() {
        tries += 1;
        assert!(tries < 100, "cfg-nightly saved no anchor");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let three_days_ago = (chrono::Utc::now() - chrono::Duration::days(3)).to_rfc3339();
    let resp = client
        .put(&state)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(serde_json::json!({ "last_fire": three_days_ago }).to_string())
        .send()
        .await
        .expect("PUT state");
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let dir = t.stop().await;

    let t = start(dir).await;
    let admin = t.admin.clone();
    let ingress = t.base.clone();

    // The page and its assets are served without a token, with their content types.
    for (path, content_type) in [
        ("/", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/timed.js", "text/javascript"),
        ("/assets/style.css", "text/css"),
    ] {
        let resp = client
            .get(format!("{admin}{path}"))
            .send()
            .await
            .expect("GET");
        assert_eq!(resp.status(), 200, "GET {path}");
        let got = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(
            got.starts_with(content_type),
            "GET {path}: content-type {got:?}, expected {content_type}"
        );
    }

    let screenshot = root.join("target/dashboard-e2e.png");
    let child = tokio::process::Command::new("node")
        .arg(e2e_dir.join("e2e.mjs"))
        .arg(&admin)
        .arg(&ingress)
        .env("MILLGATE_ADMIN_TOKEN", TOKEN)
        .env("CHROMIUM_PATH", &chromium)
        .env("DASHBOARD_SCREENSHOT", &screenshot)
        .current_dir(&e2e_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let out = tokio::time::timeout(E2E_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the browser test did not finish within {E2E_TIMEOUT:?}"))
        .expect("node runs");
    let report = format!(
        "--- e2e.mjs stdout\n{}--- e2e.mjs stderr\n{}--- screenshot: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        screenshot.display()
    );
    t.stop().await;
    assert!(
        out.status.success(),
        "the dashboard browser test failed ({}):\n{report}",
        out.status
    );
    println!("{report}");
}
