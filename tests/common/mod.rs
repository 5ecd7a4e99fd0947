//! Helpers shared by the integration tests: a real service on a free port with its sled store
//! in a temporary directory, configured through the same loader as `config.toml`; the built
//! binary as a process (binary.rs) and private brokers (brokers.rs) for the tests that kill or
//! restart them.

#![allow(dead_code)]

pub mod binary;
pub mod brokers;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use millgate::app::App;
use millgate_actors::job::{JobId, JobRecord, JobStatus};
use serde_json::Value;

pub const ADMIN_TOKEN: &str = "admin-token";

pub struct TestService {
    pub app: App,
    /// The webhook/route listener.
    pub base: String,
    /// The admin listener.
    pub admin: String,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

/// `[server]`/`[store]` for tests: a free port, a store in `dir`, short sync timeout.
pub fn header(dir: &Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
sync_timeout = "5s"

[store]
path = "{}"

[admin]
listen = "127.0.0.1:0"
token = "admin-token"
"#,
        dir.join("data").display()
    )
}

impl TestService {
    /// Starts a service on `header() + body`. `{DIR}` in `body` is the test's temp dir.
    pub async fn start(body: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!("{}\n{}", header(dir.path()), body);
        Self::start_in(dir, &text).await
    }

    /// Starts a service on a complete configuration text (`{DIR}` replaced).
    pub async fn start_in(dir: tempfile::TempDir, text: &str) -> Self {
        // jq filters run in worker processes of the millgate binary, not of this test program.
        millgate_actors::preprocess::set_worker_exe(binary::BIN.into());
        let text = text.replace("{DIR}", &dir.path().display().to_string());
        let config = millgate::load_str(&text, "test.toml", |k| std::env::var(k).ok())
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{text}"));
        let app = App::start(config).await.expect("service starts");
        let base = format!("http://{}", app.service.addr);
        let admin = app
            .admin_addr
            .map(|a| format!("http://{a}"))
            .unwrap_or_default();
        Self {
            app,
            base,
            admin,
            dir,
            client: reqwest::Client::new(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn job(&self, id: &str) -> Option<JobRecord> {
        let id: JobId = id.parse().expect("job id");
        self.app.service.store.get_job(id).expect("store read")
    }

    /// Waits until the job reaches a final status, and returns its record.
    pub async fn wait_final(&self, id: &str, within: Duration) -> JobRecord {
        let deadline = Instant::now() + within;
        loop {
            if let Some(r) = self.job(id) {
                if r.status.is_final() {
                    return r;
                }
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not final within {within:?}: {:?}",
                self.job(id).map(|r| r.status)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// All job records of a trigger.
    pub fn jobs_of(&self, trigger: &str) -> Vec<JobRecord> {
        self.app
            .service
            .store
            .jobs(Some(trigger), usize::MAX)
            .expect("store read")
    }

    pub async fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        let mut req = self.client.post(self.url(path)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    pub async fn stop(self) -> tempfile::TempDir {
        self.app.stop().await;
        self.dir
    }

    /// Waits until `n` jobs of `trigger` are final; returns them in creation order.
    pub async fn final_jobs(&self, trigger: &str, n: usize, within: Duration) -> Vec<JobRecord> {
        let deadline = Instant::now() + within;
        loop {
            let mut jobs = self.jobs_of(trigger);
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

    /// A trigger's state as the supervisor sees it.
    pub fn trigger_state(&self, name: &str) -> millgate_actors::triggers::TriggerState {
        self.trigger(name).runtime.state()
    }

    /// Waits until trigger `name` backs off with an error that satisfies `expected`; returns
    /// the error. Fails with the state it last saw after `within`.
    pub async fn wait_backing_off(
        &self,
        name: &str,
        within: Duration,
        expected: impl Fn(&str) -> bool,
    ) -> String {
        use millgate_actors::triggers::TriggerState;
        let deadline = Instant::now() + within;
        loop {
            let s = self.trigger_state(name);
            if let TriggerState::BackingOff { last_error, .. } = &s {
                if expected(last_error) {
                    return last_error.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "{name} never backed off with the expected error within {within:?}: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A trigger's counters (events received, duplicates, outcomes).
    pub fn counters(&self, name: &str) -> std::sync::Arc<millgate_actors::ack::TriggerCounters> {
        self.trigger(name).runtime.counters.clone()
    }

    fn trigger(&self, name: &str) -> std::sync::Arc<millgate_actors::supervisor::TriggerEntry> {
        self.app
            .service
            .registry
            .get(name)
            .unwrap_or_else(|| panic!("no trigger `{name}`"))
    }

    /// An admin API request with the admin token.
    pub fn admin_req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{}", self.admin, path))
            .bearer_auth(ADMIN_TOKEN)
    }

    /// `GET` on the admin API: (status, JSON body).
    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .admin_req(reqwest::Method::GET, path)
            .send()
            .await
            .expect("admin request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

pub fn status_of(r: &JobRecord) -> JobStatus {
    r.status
}

/// Polls `f` until it is true or `within` passes.
pub async fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lines of a file, or none when it does not exist yet.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// A port nobody listens on right now (for a listener the test starts by config).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A schedule or poll trigger's `schedule` status object from the admin API.
pub async fn schedule_status(t: &TestService, name: &str) -> Value {
    let (code, v) = t.admin_get(&format!("/api/triggers/{name}")).await;
    assert_eq!(code, 200, "{v}");
    v["schedule"].clone()
}

/// Waits (up to 15 s) until a schedule/poll status counter reaches `n`.
pub async fn wait_schedule_counter(t: &TestService, name: &str, counter: &str, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = schedule_status(t, name).await;
        if s[counter].as_u64().unwrap_or(0) >= n {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: `{counter}` did not reach {n}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After a `kill -9` test: every job of `trigger` in the stopped instance's store (`data_dir`)
/// succeeded, and each event made exactly one job (a message read again after the restart
/// was deduplicated by its event id). Returns how many events there were.
pub fn assert_one_job_per_event(data_dir: &Path, trigger: &str) -> usize {
    let store = millgate_actors::store::Store::open(&millgate_actors::config::StoreConfig {
        path: data_dir.to_path_buf(),
        ..Default::default()
    })
    .expect("open store");
    let jobs = store.jobs(Some(trigger), usize::MAX).expect("jobs");
    let mut per_event: std::collections::HashMap<String, usize> = Default::default();
    for j in &jobs {
        assert_eq!(j.status, JobStatus::Succeeded, "{j:?}");
        *per_event.entry(j.event_id.clone()).or_default() += 1;
    }
    let repeated: Vec<_> = per_event.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "events with several jobs: {repeated:?}"
    );
    per_event.len()
}

/// After a `kill -9` test whose runnable logs `<event id> <pid of its millgate>` per run:
/// at-least-once means a job runs again only when its outcome was not on disk at the kill,
/// so a repeated run is one run by the killed process and one by its successor, never two in
/// one process nor three. Returns how many ran twice.
pub fn assert_repeats_only_across_the_kill(done_log: &Path, first_pid: &str) -> usize {
    let mut runs: std::collections::HashMap<String, Vec<String>> = Default::default();
    for line in lines(done_log) {
        let (id, pid) = line.split_once(' ').expect("`<event id> <pid>` line");
        runs.entry(id.to_string())
            .or_default()
            .push(pid.to_string());
    }
    let mut twice = 0;
    for (id, pids) in &runs {
        if pids.len() > 1 {
            twice += 1;
            assert_eq!(pids.len(), 2, "{id} ran {} times", pids.len());
            assert!(
                pids.iter().any(|p| p == first_pid) && pids.iter().any(|p| p != first_pid),
                "{id} ran twice in one process: {pids:?}"
            );
        }
    }
    twice
}
