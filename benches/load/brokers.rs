//! The brokers a scenario runs against. A private instance of the machine's broker binary on a
//! free port when the binary is there (no other test's traffic in the measurement, settings the
//! scenario needs); else the shared one scripts/services.sh starts, when it is reachable; else
//! the scenario is skipped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{die_with_parent, free_port, reachable, BenchResult, Context, Ctx};

pub const NATS_BIN: &str = "/usr/sbin/nats-server";
pub const NATS_SHARED: &str = "127.0.0.1:4222";
pub const MOSQUITTO_BIN: &str = "/usr/sbin/mosquitto";
pub const MQTT_SHARED: &str = "127.0.0.1:1883";

/// A broker to use: its address and, when private, its process (stopped on drop).
pub struct Broker {
    pub addr: String,
    pub private: bool,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Broker {
    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    pub fn describe(&self) -> String {
        if self.private {
            format!("private instance on {}", self.addr)
        } else {
            format!("shared broker on {}", self.addr)
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_up(addr: &str, child: &mut Child, what: &str) -> BenchResult<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reachable(addr) {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited at start: {status}"));
        }
        if Instant::now() > deadline {
            return Err(format!("{what} did not come up on {addr}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn log_file(ctx: &Ctx, name: &str) -> BenchResult<std::fs::File> {
    let logs = ctx.results.join("logs");
    std::fs::create_dir_all(&logs).ctx("logs dir")?;
    std::fs::File::create(logs.join(name)).ctx("broker log")
}

/// nats-server with JetStream: private (`-js`, store in a temp dir) or the shared one.
/// `Err` is the reason to skip.
pub fn nats(ctx: &Ctx) -> Result<Broker, String> {
    if Path::new(NATS_BIN).exists() {
        let dir = tempfile::tempdir().ctx("tempdir")?;
        let port = free_port()?;
        let mut child = die_with_parent(&mut Command::new(NATS_BIN))
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(log_file(ctx, "nats-server.log")?)
            .spawn()
            .ctx("start nats-server")?;
        let addr = format!("127.0.0.1:{port}");
        wait_up(&addr, &mut child, "nats-server")?;
        return Ok(Broker {
            addr,
            private: true,
            child: Some(child),
            _dir: Some(dir),
        });
    }
    if reachable(NATS_SHARED) {
        return Ok(Broker {
            addr: NATS_SHARED.into(),
            private: false,
            child: None,
            _dir: None,
        });
    }
    Err(format!(
        "no {NATS_BIN} and no NATS server on {NATS_SHARED} (scripts/services.sh installs and starts one)"
    ))
}

/// mosquitto: private (no limit on queued messages, in-memory sessions) or the shared one.
/// `Err` is the reason to skip.
pub fn mosquitto(ctx: &Ctx) -> Result<Broker, String> {
    if Path::new(MOSQUITTO_BIN).exists() {
        let dir = tempfile::tempdir().ctx("tempdir")?;
        let port = free_port()?;
        let conf = dir.path().join("mosquitto.conf");
        // The default max_queued_messages (1000) drops messages for a persistent session
        // preloaded with more (0, "no limit", stops delivery altogether in mosquitto 2.0.11).
        // Everything else is mosquitto's default (max_inflight_messages 20).
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 10000000\n"
            ),
        )
        .ctx("mosquitto config")?;
        let mut child = die_with_parent(&mut Command::new(MOSQUITTO_BIN))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log_file(ctx, "mosquitto.log")?)
            .spawn()
            .ctx("start mosquitto")?;
        let addr = format!("127.0.0.1:{port}");
        wait_up(&addr, &mut child, "mosquitto")?;
        return Ok(Broker {
            addr,
            private: true,
            child: Some(child),
            _dir: Some(dir),
        });
    }
    if reachable(MQTT_SHARED) {
        return Ok(Broker {
            addr: MQTT_SHARED.into(),
            private: false,
            child: None,
            _dir: None,
        });
    }
    Err(format!(
        "no {MOSQUITTO_BIN} and no MQTT broker on {MQTT_SHARED} (scripts/services.sh installs and starts one)"
    ))
}
