//! What every load scenario shares: options, the result file, the table, the millgate process
//! (the real release binary), wrk, percentiles and small HTTP helpers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub type BenchResult<T> = Result<T, String>;

/// Turns any error into the scenario's failure message, with what was being done.
pub trait Context<T> {
    fn ctx(self, what: &str) -> BenchResult<T>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: &str) -> BenchResult<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

impl<T> Context<T> for Option<T> {
    fn ctx(self, what: &str) -> BenchResult<T> {
        self.ok_or_else(|| what.to_string())
    }
}

/// Options of one run of the suite.
pub struct Ctx {
    /// `--quick` / `MILLGATE_BENCH_QUICK=1`: shorter loads, same shape.
    pub quick: bool,
    /// `target/bench-results`.
    pub results: PathBuf,
    pub client: reqwest::Client,
}

impl Ctx {
    /// `full` normally, `quick` with `--quick`.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// What a scenario hands back.
pub enum Outcome {
    Done(Report),
    Skipped(String),
}

/// A scenario's figures: a small table for the terminal and the same figures as JSON.
pub struct Report {
    pub title: String,
    pub header: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
    pub figures: Value,
}

impl Report {
    pub fn new(title: impl Into<String>, header: Vec<&'static str>) -> Self {
        Self {
            title: title.into(),
            header,
            rows: Vec::new(),
            notes: Vec::new(),
            figures: json!({}),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    pub fn print(&self) {
        println!("{}", self.title);
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(c.len());
                }
            }
        }
        let line = |cells: Vec<&str>| {
            let parts: Vec<String> = cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (c, w))| {
                    if i == 0 {
                        format!("{c:<w$}")
                    } else {
                        format!("{c:>w$}")
                    }
                })
                .collect();
            println!("  {}", parts.join("  "));
        };
        line(self.header.clone());
        for r in &self.rows {
            line(r.iter().map(String::as_str).collect());
        }
        for n in &self.notes {
            println!("  note: {n}");
        }
    }
}

/// One side of a broker scenario: a consumer draining `messages` in `secs`, using `cpu_us` of
/// its own CPU per message.
pub struct Drain {
    pub label: &'static str,
    pub messages: u64,
    pub secs: f64,
    pub cpu_us: Option<f64>,
}

impl Drain {
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.secs
    }

    /// `{secs, msgs_per_sec, cpu_us_per_msg}` plus `extra`'s keys.
    pub fn figures(&self, extra: Value) -> Value {
        let mut v = json!({
            "secs": round(self.secs, 3),
            "msgs_per_sec": round(self.rate(), 1),
            "cpu_us_per_msg": self.cpu_us.map(|c| round(c, 1)),
        });
        if let (Some(o), Value::Object(more)) = (v.as_object_mut(), extra) {
            o.extend(more);
        }
        v
    }
}

/// The table of a broker scenario: the raw client, millgate, and millgate's rate as a ratio of
/// the client's (against `target`). The caller adds its notes and figures.
pub fn drain_report(title: String, base: &Drain, mg: &Drain, target: f64) -> (Report, f64) {
    let rate_ratio = ratio(mg.rate(), base.rate());
    let mut r = Report::new(title, vec!["", "msgs/s", "secs", "CPU us/msg"]);
    for side in [base, mg] {
        r.row(vec![
            side.label.into(),
            f0(side.rate()),
            f2(side.secs),
            side.cpu_us.map(f0).unwrap_or_else(|| "-".into()),
        ]);
    }
    r.row(vec![
        format!("ratio (target >= {target})"),
        format!("{rate_ratio:.3}"),
        String::new(),
        String::new(),
    ]);
    (r, rate_ratio)
}

/// CPU time (user + system, seconds) a process has used so far; `None` when unreadable.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system; no memory of ours is touched.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) / ticks as f64)
}

/// CPU µs per item between two [`cpu_secs`] readings.
pub fn cpu_us_per(after: Option<f64>, before: Option<f64>, items: u64) -> Option<f64> {
    Some((after? - before?) * 1e6 / items.max(1) as f64)
}

/// The machine, for the result files: cores, memory, CPU, load at the start of the scenario.
pub fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let meminfo = read("/proc/meminfo");
    let mem_kb = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok());
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string());
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_total_mib": mem_kb.map(|k| k / 1024),
        "cpu": cpu,
        "loadavg": read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    })
}

/// `target/bench-results/<scenario>.json`.
pub fn write_result(ctx: &Ctx, scenario: &str, body: Value) {
    let path = ctx.results.join(format!("{scenario}.json"));
    let text = serde_json::to_string_pretty(&body).unwrap_or_default();
    if let Err(e) = std::fs::create_dir_all(&ctx.results).and_then(|_| std::fs::write(&path, text))
    {
        eprintln!("cannot write {}: {e}", path.display());
    }
}

// ---------------------------------------------------------------------------------------------
// Figures

/// The `p`-th percentile (0–100) of sorted values, nearest rank.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50/p99/max of unsorted values, as JSON.
pub fn dist(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    json!({
        "n": v.len(),
        "p50": round(pct(&v, 50.0), 3),
        "p90": round(pct(&v, 90.0), 3),
        "p99": round(pct(&v, 99.0), 3),
        "max": round(v.last().copied().unwrap_or(f64::NAN), 3),
    })
}

pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// `0.62×` style ratio.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        round(a / b, 3)
    } else {
        f64::NAN
    }
}

pub fn f0(x: f64) -> String {
    format!("{x:.0}")
}

pub fn f2(x: f64) -> String {
    format!("{x:.2}")
}

// ---------------------------------------------------------------------------------------------
// Brokers and ports

/// Makes a child process die with the bench (SIGKILL when its parent thread exits), so that an
/// interrupted run leaves no millgate or broker behind.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of ours; between fork and exec
    // nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

/// Whether something listens on `addr` (a broker the scenario needs).
pub fn reachable(addr: &str) -> bool {
    addr.parse()
        .ok()
        .and_then(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(1)).ok())
        .is_some()
}

/// A port nobody listens on right now.
pub fn free_port() -> BenchResult<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .ctx("free port")
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

// ---------------------------------------------------------------------------------------------
// The millgate process

pub const ADMIN_TOKEN: &str = "bench-admin";
/// In [`Millgate::start_env`]'s `env`: the path of another millgate binary to run.
pub const BIN_OVERRIDE: &str = "MILLGATE_BENCH_BIN";
/// Pseudo environment variable: run with the default `[store] max_jobs` (100,000 finished jobs
/// kept) instead of keeping every job for the scenario to count from the store. The broker
/// scenarios count from the trigger's counters, so they run as a user would: with memory
/// bounded by retention.
pub const DEFAULT_RETENTION: &str = "MILLGATE_BENCH_DEFAULT_RETENTION";
pub const HOOK_TOKEN: &str = "bench-token";

/// `target/release/millgate run --config <dir>/millgate.toml`, its store in `<dir>/data`, its
/// log in `target/bench-results/logs/<label>.log`.
pub struct Millgate {
    child: Option<Child>,
    pub base: String,
    pub admin: String,
    dir: Option<tempfile::TempDir>,
    pub started: Instant,
    client: reqwest::Client,
}

impl Millgate {
    /// Starts millgate on `[server]`/`[admin]`/`[store]` (free ports, a fresh store) + `body`.
    /// `{DIR}` in `body` is the run's directory. Returns once the admin listener answers.
    pub async fn start(ctx: &Ctx, label: &str, body: &str) -> BenchResult<Self> {
        Self::start_env(ctx, label, body, &[]).await
    }

    /// [`Millgate::start`] with extra environment variables (`RUST_LOG`). The pseudo-variable
    /// [`BIN_OVERRIDE`] runs another build of millgate instead (not passed on).
    pub async fn start_env(
        ctx: &Ctx,
        label: &str,
        body: &str,
        env: &[(&str, &str)],
    ) -> BenchResult<Self> {
        let dir = tempfile::tempdir().ctx("tempdir")?;
        let (port, admin_port) = (free_port()?, free_port()?);
        let text = format!(
            r#"[server]
listen = "127.0.0.1:{port}"

[admin]
listen = "127.0.0.1:{admin_port}"
token = "{ADMIN_TOKEN}"

[store]
path = "{data}"
{max_jobs}

{body}"#,
            data = dir.path().join("data").display(),
            max_jobs = if env.iter().any(|(k, _)| *k == DEFAULT_RETENTION) {
                ""
            } else {
                "max_jobs = 100000000"
            },
            body = body.replace("{DIR}", &dir.path().display().to_string()),
        );
        let config = dir.path().join("millgate.toml");
        std::fs::write(&config, text).ctx("write config")?;
        let logs = ctx.results.join("logs");
        std::fs::create_dir_all(&logs).ctx("create logs dir")?;
        let log = std::fs::File::create(logs.join(format!("{label}.log"))).ctx("log file")?;
        let started = Instant::now();
        let program = env
            .iter()
            .find(|(k, _)| *k == BIN_OVERRIDE)
            .map(|(_, v)| *v)
            .unwrap_or(env!("CARGO_BIN_EXE_millgate"));
        let env = env
            .iter()
            .filter(|(k, _)| *k != BIN_OVERRIDE && *k != DEFAULT_RETENTION);
        let child = die_with_parent(&mut Command::new(program))
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .envs(env.copied())
            .spawn()
            .ctx("start millgate")?;
        let mut m = Self {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            admin: format!("http://127.0.0.1:{admin_port}"),
            dir: Some(dir),
            started,
            client: ctx.client.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = m.client.get(format!("{}/healthz", m.admin)).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if let Some(Ok(Some(status))) = m.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!(
                    "millgate exited at start ({status}); see target/bench-results/logs/{label}.log"
                ));
            }
            if Instant::now() > deadline {
                return Err("millgate did not come up within 120 s".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(m)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// A `/proc/<pid>/status` field in kB (`VmRSS`, `VmHWM`).
    pub fn status_kb(&self, field: &str) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        text.lines()
            .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// `GET` on the admin API.
    pub async fn api(&self, path: &str) -> BenchResult<Value> {
        let r = self
            .client
            .get(format!("{}{path}", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .ctx(path)?;
        let status = r.status();
        let v: Value = r.json().await.ctx(path)?;
        if !status.is_success() {
            return Err(format!("{path}: {status} {v}"));
        }
        Ok(v)
    }

    /// `POST` on the admin API.
    pub async fn api_post(&self, path: &str) -> BenchResult<Value> {
        let r = self
            .client
            .post(format!("{}{path}", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .ctx(path)?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(format!("{path}: {status} {v}"));
        }
        Ok(v)
    }

    /// A trigger's counter (`events_received`, `jobs_created`, `jobs_succeeded`, ...).
    pub async fn counters(&self, trigger: &str) -> BenchResult<Value> {
        let v = self.api(&format!("/api/triggers/{trigger}")).await?;
        Ok(v["counters"].clone())
    }

    /// Waits until `trigger` has `n` succeeded jobs, polling every 50 ms for up to `within`.
    pub async fn wait_succeeded(&self, trigger: &str, n: u64, within: Duration) -> BenchResult<()> {
        let deadline = Instant::now() + within;
        loop {
            let counters = self.counters(trigger).await?;
            if counters["jobs_succeeded"].as_u64().unwrap_or(0) >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "millgate ran fewer than {n} jobs in {within:?}: {counters}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the trigger's state is `running`.
    pub async fn wait_running(&self, trigger: &str) -> BenchResult<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.api(&format!("/api/triggers/{trigger}")).await?;
            if v["state"] == "running" || v["state"] == "suspended" {
                return Ok(v);
            }
            if Instant::now() > deadline {
                return Err(format!("trigger {trigger} not running: {v}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every job the trigger created is settled; returns the counters.
    pub async fn wait_drained(&self, trigger: &str, within: Duration) -> BenchResult<Value> {
        let deadline = Instant::now() + within;
        // Requests the load generator abandoned may still be on their way into the queue: the
        // counts must also stay the same for a moment.
        let mut settled: Option<Value> = None;
        loop {
            let c = self.counters(trigger).await?;
            let n = |k: &str| c[k].as_u64().unwrap_or(0);
            if n("jobs_succeeded") + n("jobs_dead_lettered") >= n("jobs_created") {
                if settled.as_ref() == Some(&c) {
                    return Ok(c);
                }
                settled = Some(c);
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            settled = None;
            if Instant::now() > deadline {
                return Err(format!(
                    "jobs of {trigger} not drained within {within:?}: {c}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits for the exit (SIGKILL after 20 s). The store can be opened after.
    pub async fn stop(mut self) -> BenchResult<tempfile::TempDir> {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill takes plain integers; the pid is our own child, not yet reaped.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if child.try_wait().ctx("wait for millgate")?.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.dir.take().ctx("millgate stopped twice")
    }
}

impl Drop for Millgate {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Job records of `trigger` from a stopped millgate's store.
pub fn stored_jobs(dir: &Path, trigger: &str) -> BenchResult<Vec<millgate_actors::job::JobRecord>> {
    let store = millgate_actors::store::Store::open(&millgate_actors::config::StoreConfig {
        path: dir.join("data"),
        ..Default::default()
    })
    .ctx("open the store")?;
    store.jobs(Some(trigger), usize::MAX).ctx("read jobs")
}

// ---------------------------------------------------------------------------------------------
// wrk

/// One wrk run's figures (latencies in ms).
#[derive(Debug, Clone)]
pub struct WrkRun {
    pub requests: u64,
    pub secs: f64,
    /// Responses that were not 2xx/3xx.
    pub non_2xx: u64,
    pub socket_errors: u64,
    pub rps: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl WrkRun {
    /// 2xx answers per second.
    pub fn ok_rps(&self) -> f64 {
        self.requests.saturating_sub(self.non_2xx) as f64 / self.secs
    }

    pub fn ok(&self) -> u64 {
        self.requests.saturating_sub(self.non_2xx)
    }

    pub fn json(&self) -> Value {
        json!({
            "requests": self.requests, "secs": round(self.secs, 3), "non_2xx": self.non_2xx,
            "socket_errors": self.socket_errors, "rps": round(self.rps, 1),
            "ok_rps": round(self.ok_rps(), 1),
            "latency_ms": {"p50": self.p50, "p90": self.p90, "p99": self.p99, "max": self.max},
        })
    }
}

pub fn wrk_available() -> bool {
    Command::new("wrk")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// `wrk -t<threads> -c<conns> -d<secs>s --latency` POSTing a small JSON body with the webhook
/// token. The figures come from a Lua `done` hook printing JSON.
pub async fn wrk(ctx: &Ctx, url: &str, conns: u32, secs: u64, threads: u32) -> BenchResult<WrkRun> {
    let script = ctx.results.join("wrk-post.lua");
    std::fs::create_dir_all(&ctx.results).ctx("results dir")?;
    std::fs::write(
        &script,
        format!(
            r#"wrk.method = "POST"
wrk.body = '{{"name":"Ada","order":{{"id":"ord_123","items":[1,2,3]}}}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {HOOK_TOKEN}"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {{"requests":%d,"duration_us":%d,"status":%d,"socket":%d,"p50":%d,"p90":%d,"p99":%d,"max":%d}}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"#
        ),
    )
    .ctx("write wrk script")?;
    let out = tokio::process::Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .arg("--timeout")
        .arg("10s")
        .arg("-s")
        .arg(&script)
        .arg(url)
        .output()
        .await
        .ctx("run wrk")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("WRKJSON "))
        .ctx(&format!("wrk printed no figures: {stdout}"))?;
    let v: Value = serde_json::from_str(line).ctx("wrk figures")?;
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let secs = n("duration_us") as f64 / 1e6;
    let ms = |k: &str| n(k) as f64 / 1000.0;
    Ok(WrkRun {
        requests: n("requests"),
        secs,
        non_2xx: n("status"),
        socket_errors: n("socket"),
        rps: n("requests") as f64 / secs,
        p50: ms("p50"),
        p90: ms("p90"),
        p99: ms("p99"),
        max: ms("max"),
    })
}

// ---------------------------------------------------------------------------------------------
// The baseline HTTP server

/// A bare axum handler answering `202 {"job_id": <uuid>}` on `POST /hooks/{name}`, on its own
/// runtime (as many workers as millgate's: one per core). Dropped → stopped.
pub struct BareAxum {
    pub base: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl BareAxum {
    pub fn start() -> BenchResult<Self> {
        use axum::routing::post;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .ctx("baseline runtime")?;
        // Bound here, served on the baseline's runtime (this may run inside another runtime).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").ctx("bind baseline")?;
        listener.set_nonblocking(true).ctx("baseline listener")?;
        let addr = listener.local_addr().ctx("baseline addr")?;
        let app = axum::Router::new().route(
            "/hooks/{name}",
            post(|_body: axum::body::Bytes| async {
                (
                    axum::http::StatusCode::ACCEPTED,
                    axum::Json(json!({"job_id": uuid::Uuid::now_v7()})),
                )
            }),
        );
        runtime.spawn(async move {
            if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                let _ = axum::serve(listener, app).await;
            }
        });
        Ok(Self {
            base: format!("http://{addr}"),
            runtime: Some(runtime),
        })
    }
}

impl Drop for BareAxum {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
