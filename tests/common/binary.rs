//! The built `millgate` binary run as an operator runs it, for the tests that need a real
//! process: `kill -9` and restarts on the same data directory, SIGTERM, the environment, what it
//! logs. One [`MillgateProcess`] is one temp dir (its `config.toml`, the store in `data/`, one
//! log per start) and at most one running process, killed with -9 when dropped so that a failing
//! test leaves none behind. Tests that only need the service use `TestService` (mod.rs), which
//! runs it inside the test program.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{free_port, ADMIN_TOKEN};

/// The binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_millgate");

/// How long a start may take to answer `/healthz` on both listeners.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` waits after SIGTERM (tests with a bound of their own use `stop_within`).
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Where a start's stderr goes.
enum Output {
    /// `millgate-<n>.log` in the temp dir for the n-th start: read after a kill, and kept for
    /// whoever looks at a failed run.
    File(PathBuf),
    /// A pipe read line by line into memory by a thread, for tests about what a pipe receives.
    Pipe(Arc<Mutex<Vec<String>>>),
}

pub struct MillgateProcess {
    dir: tempfile::TempDir,
    /// `--config <path>`; none runs the embedded default configuration.
    config: Option<PathBuf>,
    /// `http://127.0.0.1:<port>` of the webhook/route listener.
    pub ingress: String,
    /// `http://127.0.0.1:<port>` of the admin listener.
    pub admin: String,
    global_args: Vec<String>,
    /// Variables set (`Some`) or removed (`None`) for every start from now on.
    env: BTreeMap<String, Option<OsString>>,
    cwd: Option<PathBuf>,
    nofile: Option<u64>,
    pipe: bool,
    child: Option<Child>,
    output: Option<Output>,
    starts: usize,
    client: reqwest::Client,
}

impl MillgateProcess {
    /// `config.toml` in a new temp dir: both listeners on free ports, the store in
    /// `<dir>/data`, the admin token [`ADMIN_TOKEN`], then `body` with `{DIR}` replaced by the
    /// temp dir. Nothing runs until `start` or `spawn`.
    pub fn new(body: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display().to_string();
        let (ingress, admin) = (free_port(), free_port());
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:{ingress}"

[store]
path = "{d}/data"

[admin]
listen = "127.0.0.1:{admin}"
token = "{ADMIN_TOKEN}"
{}"#,
            body.replace("{DIR}", &d)
        );
        let config = dir.path().join("config.toml");
        std::fs::write(&config, text).expect("write config.toml");
        Self::with(dir, Some(config), ingress, admin)
    }

    /// `millgate run` without `--config` in a new temp dir, as the README's first command
    /// starts it: the embedded default configuration (config.toml at the repository root),
    /// its listeners moved to free ports and its store to `<dir>/data` through the variables
    /// it reads, and no admin token from the environment (it generates one).
    pub fn default_config() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ingress, admin) = (free_port(), free_port());
        let mut p = Self::with(dir, None, ingress, admin);
        let (data, cwd) = (p.data_dir(), p.dir.path().to_path_buf());
        p.env("MILLGATE_LISTEN", format!("127.0.0.1:{ingress}"))
            .env("MILLGATE_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
            .env("MILLGATE_DATA", data)
            .env_remove("MILLGATE_ADMIN_TOKEN")
            .current_dir(cwd);
        p
    }

    fn with(dir: tempfile::TempDir, config: Option<PathBuf>, ingress: u16, admin: u16) -> Self {
        Self {
            dir,
            config,
            ingress: format!("http://127.0.0.1:{ingress}"),
            admin: format!("http://127.0.0.1:{admin}"),
            global_args: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            nofile: None,
            pipe: false,
            child: None,
            output: None,
            starts: 0,
            client: reqwest::Client::new(),
        }
    }

    // --- How it is started (for every start from now on)

    pub fn env(&mut self, key: &str, value: impl Into<OsString>) -> &mut Self {
        self.env.insert(key.to_string(), Some(value.into()));
        self
    }

    pub fn env_remove(&mut self, key: &str) -> &mut Self {
        self.env.insert(key.to_string(), None);
        self
    }

    /// Arguments before `run` (`--log-format json`).
    pub fn global_args(&mut self, args: &[&str]) -> &mut Self {
        self.global_args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn current_dir(&mut self, dir: PathBuf) -> &mut Self {
        self.cwd = Some(dir);
        self
    }

    /// The process's open-file limit (soft and hard), set between fork and exec.
    pub fn nofile_limit(&mut self, n: u64) -> &mut Self {
        self.nofile = Some(n);
        self
    }

    /// Stderr into a pipe (read by a thread) instead of a file.
    pub fn stderr_to_pipe(&mut self) -> &mut Self {
        self.pipe = true;
        self
    }

    // --- Where things are

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A file in the temp dir (`{DIR}/name` in the config).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The store: `[store] path`, or `$MILLGATE_DATA` of the default configuration.
    pub fn data_dir(&self) -> PathBuf {
        self.path("data")
    }

    pub fn config_path(&self) -> &Path {
        self.config
            .as_deref()
            .expect("a config.toml (not the default config)")
    }

    /// `127.0.0.1:<port>` of the webhook/route listener.
    pub fn ingress_addr(&self) -> &str {
        self.ingress.trim_start_matches("http://")
    }

    /// `127.0.0.1:<port>` of the admin listener.
    pub fn admin_addr(&self) -> &str {
        self.admin.trim_start_matches("http://")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.ingress)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.admin)
    }

    /// The admin token: [`ADMIN_TOKEN`] from `config.toml`, or the one the default
    /// configuration generated into `<data>/admin-token` at its first start.
    pub fn admin_token(&self) -> String {
        if self.config.is_some() {
            return ADMIN_TOKEN.to_string();
        }
        let file = self.data_dir().join("admin-token");
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .trim()
            .to_string()
    }

    /// `millgate <args> --admin-url <admin> --token <token>`, as an operator types it.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(&self.admin, &self.admin_token(), args)
    }

    // --- The process

    /// The pid of the current (or last) start.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("started").id()
    }

    /// Starts the process and returns at once (tests that watch it work before it listens, or
    /// that expect it to exit). Again after `kill_9` or `stop`: a restart on the same config
    /// and data directory.
    pub fn spawn(&mut self) {
        if let Some(c) = self.child.as_mut() {
            assert!(
                c.try_wait().expect("wait").is_some(),
                "millgate is still running"
            );
        }
        self.starts += 1;
        let mut cmd = Command::new(BIN);
        cmd.args(&self.global_args).arg("run");
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        if let Some(n) = self.nofile {
            set_nofile_after_fork(&mut cmd, n);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let log = self.path(&format!("millgate-{}.log", self.starts));
        if self.pipe {
            cmd.stderr(Stdio::piped());
        } else {
            cmd.stderr(std::fs::File::create(&log).expect("log file"));
        }
        let mut child = cmd.spawn().expect("millgate starts");
        self.output = Some(match child.stderr.take() {
            Some(stderr) => {
                let lines = Arc::new(Mutex::new(Vec::new()));
                let into = lines.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                        into.lock().expect("lines").push(line);
                    }
                });
                Output::Pipe(lines)
            }
            None => Output::File(log),
        });
        self.child = Some(child);
    }

    /// `spawn`, then `ready`.
    pub async fn start(&mut self) {
        self.spawn();
        self.ready().await;
    }

    /// Waits until both listeners answer `GET /healthz`; fails with the log when the process
    /// exits first or takes longer than 30 s.
    pub async fn ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        for base in [self.ingress.clone(), self.admin.clone()] {
            loop {
                let up = self.client.get(format!("{base}/healthz")).send().await;
                if up.is_ok_and(|r| r.status().is_success()) {
                    break;
                }
                if let Some(status) = self.try_wait() {
                    panic!(
                        "millgate exited ({status}) before it listened:\n{}",
                        self.output()
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "millgate did not come up at {base}:\n{}",
                    self.output()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Waits until the current start's output contains `text`; fails with the output after
    /// `within`, killing the process.
    pub async fn wait_output(&mut self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.output().contains(text) {
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "millgate never logged `{text}`; it logged:\n{}",
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `kill -9` (SIGKILL), and reaps it. The process must still be running: a test that
    /// crashes it means to crash a live one.
    pub fn kill_9(&mut self) {
        if let Some(status) = self.try_wait() {
            panic!(
                "millgate had exited ({status}) before kill -9:\n{}",
                self.output()
            );
        }
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn sigterm(&self) {
        // SAFETY: kill(2) with the pid of the child this test started and a signal number.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
    }

    /// SIGTERM, then the exit status; fails with the log after 20 s.
    pub async fn stop(&mut self) -> ExitStatus {
        self.stop_within(STOP_TIMEOUT).await
    }

    /// SIGTERM, then the exit status; fails with the log (and kills it) after `within`.
    pub async fn stop_within(&mut self, within: Duration) -> ExitStatus {
        self.sigterm();
        match self.wait_exit(within).await {
            Some(status) => status,
            None => {
                self.kill();
                panic!(
                    "millgate did not stop within {within:?} of SIGTERM:\n{}",
                    self.output()
                );
            }
        }
    }

    /// Waits for the process to end: its status, or `None` while it still runs after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .expect("started")
            .try_wait()
            .expect("wait")
    }

    /// What the current (or last) start wrote to stderr so far.
    pub fn output(&self) -> String {
        match &self.output {
            Some(Output::File(log)) => std::fs::read_to_string(log).unwrap_or_default(),
            Some(Output::Pipe(lines)) => lines.lock().expect("lines").join("\n"),
            None => String::new(),
        }
    }
}

impl Drop for MillgateProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn set_nofile_after_fork(cmd: &mut Command, n: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let rl = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `millgate <args> --admin-url <admin> --token <token>`: its stdout, once it succeeded.
pub fn cli(admin: &str, token: &str, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .args(["--admin-url", admin, "--token", token])
        .output()
        .expect("run millgate");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
