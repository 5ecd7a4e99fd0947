//! Scenario 10: Postgres → noop runnable (row granularity, the slot confirmed over settled
//! transactions), against the same replication stream read raw by the same crate
//! (pgwire-replication, each message decoded by millgate's pgoutput decoder, the slot confirmed
//! at every commit). Both read a backlog of the same committed rows from slots of their own on
//! a private cluster (`initdb` on a free port, `wal_level = logical`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use millgate_actors::triggers::postgres::pgoutput::{self, Message};
use millgate_actors::triggers::postgres::pgwire_replication::{
    Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent,
};
use millgate_actors::triggers::postgres::tokio_postgres::{self, NoTls};
use serde_json::json;

use crate::harness::{
    cpu_secs, cpu_us_per, die_with_parent, drain_report, free_port, reachable, round, BenchResult,
    Context, Ctx, Drain, Millgate, Outcome,
};

/// Rows per committed transaction.
const TX_ROWS: usize = 100;

/// A private cluster, stopped on drop.
struct Cluster {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bin_dir() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .map(|v| PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")))
}

/// `program`, as the `postgres` user when this runs as root (initdb refuses root).
fn as_postgres(program: &Path) -> Command {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
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
}

fn cluster(ctx: &Ctx) -> BenchResult<Cluster> {
    let bin = bin_dir().ok_or("no Postgres under /usr/lib/postgresql")?;
    let dir = tempfile::tempdir().ctx("tempdir")?;
    // SAFETY: as above.
    if unsafe { libc::geteuid() } == 0 {
        let out = Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path())
            .output()
            .ctx("chown")?;
        if !out.status.success() {
            return Err("cannot hand the cluster's directory to the postgres user".into());
        }
    }
    let data = dir.path().join("pgdata");
    let out = as_postgres(&bin.join("initdb"))
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
        .ctx("initdb")?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let port = free_port()?;
    let logs = ctx.results.join("logs");
    std::fs::create_dir_all(&logs).ctx("logs dir")?;
    let log = std::fs::File::create(logs.join("postgres.log")).ctx("log")?;
    let mut child = die_with_parent(&mut as_postgres(&bin.join("postgres")))
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "wal_level=logical", "-c", "max_wal_senders=10"])
        .args(["-c", "max_replication_slots=10"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.path().display()))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .ctx("start postgres")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reachable(&format!("127.0.0.1:{port}")) {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("postgres exited at start: {status}"));
        }
        if Instant::now() > deadline {
            return Err("postgres did not come up".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Cluster {
        port,
        child,
        _dir: dir,
    })
}

async fn sql(url: &str) -> BenchResult<tokio_postgres::Client> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio_postgres::connect(url, NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                return Ok(client);
            }
            Err(e) if Instant::now() > deadline => return Err(format!("connect: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Reads slot `bench_raw` until `n` inserts were decoded, confirming each commit.
async fn raw_reader(port: u16, n: u64) -> BenchResult<()> {
    let cfg = ReplicationConfig::new(
        "127.0.0.1",
        "postgres",
        "",
        "postgres",
        "bench_raw",
        "bench",
    )
    .with_port(port)
    .with_start_lsn(Lsn::from(0u64));
    let mut client = ReplicationClient::connect(cfg).await.ctx("replication")?;
    client.wait_started().await.ctx("start replication")?;
    let mut inserts = 0u64;
    while inserts < n {
        let event = tokio::time::timeout(Duration::from_secs(60), client.recv())
            .await
            .ctx("no change for 60 s")?
            .ctx("stream")?
            .ok_or("the stream ended")?;
        match event {
            ReplicationEvent::XLogData { data, .. } => {
                if let Message::Insert { .. } = pgoutput::decode(&data).ctx("decode")? {
                    inserts += 1;
                }
            }
            ReplicationEvent::Commit { end_lsn, .. } => client.update_applied_lsn(end_lsn),
            _ => {}
        }
    }
    client.stop();
    Ok(())
}

pub async fn run(ctx: &Ctx) -> BenchResult<Outcome> {
    if bin_dir().is_none() {
        return Ok(Outcome::Skipped(
            "no Postgres server binaries under /usr/lib/postgresql (scripts/services.sh installs them)"
                .into(),
        ));
    }
    let n: u64 = ctx.pick(50_000, 10_000);
    let pg = cluster(ctx)?;
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    let c = sql(&url).await?;
    // Both slots exist before the rows are written: both see the same backlog. One statement
    // each: a slot cannot be made in a transaction that has written.
    for statement in [
        "CREATE TABLE t (id int PRIMARY KEY, payload text)",
        "CREATE PUBLICATION bench FOR TABLE t",
        "SELECT pg_create_logical_replication_slot('bench_raw', 'pgoutput')",
        "SELECT pg_create_logical_replication_slot('bench_mg', 'pgoutput')",
    ] {
        c.batch_execute(statement).await.map_err(|e| {
            let why = e
                .as_db_error()
                .map_or(e.to_string(), |d| d.message().to_string());
            format!("{statement}: {why}")
        })?;
    }
    let preload_start = Instant::now();
    let txs = (n as usize).div_ceil(TX_ROWS);
    for tx in 0..txs {
        let first = tx * TX_ROWS + 1;
        let last = ((tx + 1) * TX_ROWS).min(n as usize);
        c.batch_execute(&format!(
            "INSERT INTO t SELECT g, 'order ' || g FROM generate_series({first}, {last}) g"
        ))
        .await
        .ctx("insert")?;
    }
    let preload_secs = preload_start.elapsed().as_secs_f64();

    let me = std::process::id();
    let cpu0 = cpu_secs(me);
    let t0 = Instant::now();
    raw_reader(pg.port, n).await?;
    let base = Drain {
        label: "raw pgwire-replication stream, decoded",
        messages: n,
        secs: t0.elapsed().as_secs_f64(),
        cpu_us: cpu_us_per(cpu_secs(me), cpu0, n),
    };

    let config = format!(
        r#"
[runnables.noop]
kind = "echo"

[[triggers]]
name = "cdc"
kind = "postgres"
runnable = "noop"
connection = "{url}"
publication = "bench"
slot = "bench_mg"
"#
    );
    let m = Millgate::start_env(
        ctx,
        "postgres",
        &config,
        &[(crate::harness::DEFAULT_RETENTION, "1")],
    )
    .await?;
    let cpu0 = cpu_secs(m.pid());
    let t0 = Instant::now();
    m.wait_succeeded("cdc", n, Duration::from_secs(600)).await?;
    let mine = Drain {
        label: "millgate trigger -> echo, slot confirmed after run",
        messages: n,
        secs: t0.elapsed().as_secs_f64(),
        cpu_us: cpu_us_per(cpu_secs(m.pid()), cpu0, n),
    };
    let counters = m.wait_drained("cdc", Duration::from_secs(60)).await?;
    let hwm_kb = m.status_kb("VmHWM");
    m.stop().await?;
    let succeeded = counters["jobs_succeeded"].as_u64().unwrap_or(0);

    let title = format!("{n} committed rows ({TX_ROWS} per transaction) on a private Postgres");
    let (mut r, rate_ratio) = drain_report(title, &base, &mine, 0.8);
    r.note("both read the same backlog from slots of their own; millgate's time starts once it answers /healthz (it includes the control plane and opening the stream) and ends when the last job succeeded");
    r.note(format!(
        "preload {preload_secs:.1} s; millgate jobs succeeded {succeeded} of {n}; peak RSS {} MiB",
        hwm_kb.map(|k| k / 1024).unwrap_or(0)
    ));
    r.figures = json!({
        "rows": n, "rows_per_transaction": TX_ROWS, "preload_secs": round(preload_secs, 2),
        "baseline": base.figures(json!({})),
        "millgate": mine.figures(json!({"jobs_succeeded": succeeded, "vm_hwm_kb": hwm_kb})),
        "ratio": rate_ratio,
    });
    drop(pg);
    if succeeded != n {
        return Err(format!("millgate succeeded {succeeded} jobs of {n} rows"));
    }
    Ok(Outcome::Done(r))
}
