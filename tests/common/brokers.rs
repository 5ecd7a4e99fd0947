//! Private brokers for the tests that stop a broker or need settings of their own (tests/nats.rs,
//! tests/mqtt.rs, tests/kafka.rs): a nats-server, a mosquitto or a tansu on free ports, started
//! from the binaries scripts/services.sh installs, with their files in a temp dir of their own.
//! Each constructor returns once the broker accepts connections; a [`BrokerProcess`] is killed
//! when dropped. The shared brokers (NATS :4222, Mosquitto :1883, tansu :9092) are not these.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// How long a broker may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct BrokerProcess {
    name: &'static str,
    /// Where it listens; every start waits for all of them.
    ports: Vec<u16>,
    /// Its config, store and log.
    dir: tempfile::TempDir,
    log: Option<PathBuf>,
    command: Box<dyn Fn() -> Command + Send + Sync>,
    child: Option<Child>,
}

impl BrokerProcess {
    /// nats-server with JetStream on a free port, its store in the broker's temp dir (kept
    /// across `terminate` and `restart`).
    pub async fn nats() -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("jetstream");
        let command = move || {
            let mut c = Command::new("/usr/sbin/nats-server");
            c.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(&store)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            c
        };
        Self::start("nats-server", vec![port], dir, None, Box::new(command)).await
    }

    /// Mosquitto on a free port, anonymous clients allowed.
    pub async fn mosquitto() -> Self {
        Self::mosquitto_with(&format!(
            "listener {} 127.0.0.1\nallow_anonymous true\n",
            free_port()
        ))
        .await
    }

    /// Mosquitto with `conf` (its listener and security lines; every `listener <port>` is
    /// waited for), logging everything to `mosquitto.log` in its temp dir. Started as root,
    /// mosquitto would switch to its own user, who cannot read the test's files: it stays root.
    pub async fn mosquitto_with(conf: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = conf
            .lines()
            .filter_map(|l| l.strip_prefix("listener ")?.split_whitespace().next())
            .map(|p| p.parse().expect("listener port"))
            .collect();
        let path = dir.path().join("mosquitto.conf");
        std::fs::write(
            &path,
            format!("persistence false\nlog_dest stderr\nlog_type all\nuser root\n{conf}"),
        )
        .expect("mosquitto config");
        let log = dir.path().join("mosquitto.log");
        let to = log.clone();
        let command = move || {
            let mut c = Command::new("/usr/sbin/mosquitto");
            c.arg("-c")
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&to).expect("log file"));
            c
        };
        Self::start("mosquitto", ports, dir, Some(log), Box::new(command)).await
    }

    /// tansu on a free port, in-memory storage (it forgets its topics when it stops). The
    /// binary: `$TANSU`, else `~/.cargo/bin/tansu` (where scripts/services.sh installs it),
    /// else `tansu` on PATH.
    pub async fn tansu() -> Self {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let bin = std::env::var("TANSU")
            .ok()
            .or_else(|| {
                let home = std::env::var("HOME").ok()?;
                let p = Path::new(&home).join(".cargo/bin/tansu");
                p.exists().then(|| p.display().to_string())
            })
            .unwrap_or_else(|| "tansu".into());
        let command = move || {
            let mut c = Command::new(&bin);
            c.args(["broker", "--listener-url", &url])
                .args(["--advertised-listener-url", &url])
                .args(["--storage-engine", "memory://tansu/"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            c
        };
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start("tansu", vec![port], dir, None, Box::new(command)).await
    }

    /// A Postgres cluster of its own on a free port, made by the installed binaries
    /// (`/usr/lib/postgresql/<newest>/bin`) in the broker's temp dir: `wal_level = logical`,
    /// trust auth for the `postgres` user, its log in `postgres.log`. `initdb` refuses to run as
    /// root, so as root both it and the server run as the `postgres` user (`setpriv` execs, so
    /// the child is the postmaster itself and `kill` is a crash).
    pub async fn postgres() -> Self {
        Self::postgres_with("logical").await
    }

    /// [`BrokerProcess::postgres`] with another `wal_level` (to see it refused).
    pub async fn postgres_with(wal_level: &str) -> Self {
        let wal_level = format!("wal_level={wal_level}");
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("Postgres installed (/usr/lib/postgresql)")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .max()
            .map(|v| PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")))
            .expect("a Postgres version under /usr/lib/postgresql");
        let as_root = running_as_root();
        let data = dir.path().join("pgdata");
        if as_root {
            chown_to_postgres(dir.path());
        }
        let as_postgres = move |program: PathBuf| {
            if as_root {
                let mut c = Command::new("setpriv");
                c.args([
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    "--",
                ])
                .arg(program);
                c
            } else {
                Command::new(program)
            }
        };
        let out = as_postgres(bin.join("initdb"))
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data)
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = dir.path().join("postgres.log");
        let to = log.clone();
        let socket_dir = dir.path().to_path_buf();
        let command = move || {
            let mut c = as_postgres(bin.join("postgres"));
            c.arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
                .args(["-c", &wal_level, "-c", "max_wal_senders=10"])
                // Keepalives every few seconds: an idle slot's confirmation is seen soon.
                .args(["-c", "wal_sender_timeout=5s"])
                .args(["-c", "max_replication_slots=10", "-c", "fsync=off"])
                .arg("-c")
                .arg(format!("unix_socket_directories={}", socket_dir.display()))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&to).expect("log file"));
            c
        };
        Self::start("postgres", vec![port], dir, Some(log), Box::new(command)).await
    }

    async fn start(
        name: &'static str,
        ports: Vec<u16>,
        dir: tempfile::TempDir,
        log: Option<PathBuf>,
        command: Box<dyn Fn() -> Command + Send + Sync>,
    ) -> Self {
        let mut b = Self {
            name,
            ports,
            dir,
            log,
            command,
            child: None,
        };
        b.restart().await;
        b
    }

    /// Its (first) port.
    pub fn port(&self) -> u16 {
        self.ports[0]
    }

    /// `127.0.0.1:<port>`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts it again, same ports and files, after `kill` or `terminate`; returns once it
    /// accepts connections.
    pub async fn restart(&mut self) {
        if let Some(c) = self.child.as_mut() {
            assert!(
                c.try_wait().expect("wait").is_some(),
                "{} is still running",
                self.name
            );
        }
        let child = (self.command)().spawn().unwrap_or_else(|e| {
            panic!(
                "{} starts (scripts/services.sh installs it): {e}",
                self.name
            )
        });
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        for port in self.ports.clone() {
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                let exited = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                assert!(
                    exited.is_none() && Instant::now() < deadline,
                    "{} did not come up on port {port} ({exited:?}){}",
                    self.name,
                    self.log_text()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and waits for it to exit (nats-server writes its JetStream state first).
    pub fn terminate(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // SAFETY: kill(2) with the pid of the child this test started and a signal number.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
            let _ = c.wait();
        }
    }

    fn log_text(&self) -> String {
        self.log
            .as_ref()
            .map(|l| format!(":\n{}", std::fs::read_to_string(l).unwrap_or_default()))
            .unwrap_or_default()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether this process runs as root (initdb refuses to).
fn running_as_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Hands `dir` to the `postgres` user, who runs the private cluster inside it.
fn chown_to_postgres(dir: &Path) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id runs");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the postgres user exists")
    };
    std::os::unix::fs::chown(dir, Some(id("-u")), Some(id("-g"))).expect("chown to postgres");
}
