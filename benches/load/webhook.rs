//! Scenarios 1 (webhook throughput vs bare axum) and 5 (latency at a fixed rate).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use millgate_actors::job::{JobId, JobStatus};
use serde_json::{json, Value};

use crate::harness::{
    cpu_secs, dist, f0, f2, pct, ratio, round, stored_jobs, wrk, wrk_available, BareAxum,
    BenchResult, Context, Ctx, Millgate, Outcome, Report, WrkRun, BIN_OVERRIDE, HOOK_TOKEN,
};

/// An async webhook on the in-process `echo` runnable (the cheapest one there is), plus a
/// second one for the warm-up so that the measured trigger's counters are the run's alone.
fn config() -> String {
    format!(
        r#"
[runnables.noop]
kind = "echo"

[[triggers]]
name = "bench"
kind = "webhook"
mode = "async"
runnable = "noop"
token = "{HOOK_TOKEN}"

[[triggers]]
name = "warm"
kind = "webhook"
mode = "async"
runnable = "noop"
token = "{HOOK_TOKEN}"
"#
    )
}

/// Other builds of millgate to compare, `name=path,...`: the allocators (BENCHMARKS.md says
/// how to build them). Each gets a row of its own in the same run.
const OTHER_BUILDS: &str = "MILLGATE_BENCH_ALLOCATORS";

/// One millgate run under wrk: its figures and whether its jobs add up.
struct Variant {
    label: String,
    /// Process CPU per accepted job during the load, µs.
    cpu_us: Option<f64>,
    run: WrkRun,
    figures: Value,
    note: String,
}

/// Starts millgate with `env`, warms it up on the `warm` trigger, loads `bench` with wrk, waits
/// for the queue to drain, stops it, and checks every accepted job completed (store).
async fn millgate_under_wrk(
    ctx: &Ctx,
    label: &str,
    log: &str,
    env: &[(&str, &str)],
    conns: u32,
    secs: u64,
    threads: u32,
) -> BenchResult<Variant> {
    let m = Millgate::start_env(ctx, log, &config(), env).await?;
    m.wait_running("bench").await?;
    wrk(ctx, &format!("{}/hooks/warm", m.base), conns, 1, threads).await?;
    m.wait_drained("warm", Duration::from_secs(60)).await?;
    let cpu0 = cpu_secs(m.pid());
    let url = format!("{}/hooks/bench", m.base);
    let run = wrk(ctx, &url, conns, secs, threads).await?;
    let cpu = cpu_secs(m.pid()).zip(cpu0).map(|(b, a)| b - a);
    let drain_start = Instant::now();
    let counters = m.wait_drained("bench", Duration::from_secs(300)).await?;
    let drain_secs = drain_start.elapsed().as_secs_f64();
    let hwm_kb = m.status_kb("VmHWM");
    let dir = m.stop().await?;
    let succeeded = stored_jobs(dir.path(), "bench")?
        .iter()
        .filter(|j| j.status == JobStatus::Succeeded)
        .count() as u64;
    let n = |k: &str| counters[k].as_u64().unwrap_or(0);
    let created = n("jobs_created");
    // wrk abandons the requests in flight when its time is up: their jobs exist, their 202s
    // were not counted. So created ∈ [2xx, 2xx + connections].
    let consistent = succeeded == created
        && n("jobs_succeeded") == created
        && created >= run.ok()
        && created <= run.ok() + u64::from(conns);
    if !consistent {
        return Err(format!(
            "{label}: jobs do not add up: 2xx {}, created {created}, succeeded {succeeded}",
            run.ok()
        ));
    }
    let cpu_us = cpu.map(|c| c * 1e6 / (created.max(1)) as f64);
    Ok(Variant {
        label: label.to_string(),
        cpu_us,
        figures: json!({
            "cpu_secs": cpu.map(|c| round(c, 3)), "cpu_us_per_job": cpu_us.map(|c| round(c, 1)),
            "env": env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "wrk": run.json(),
            "jobs": {"answered_2xx": run.ok(), "created": created,
                     "succeeded_counters": n("jobs_succeeded"), "succeeded_store": succeeded,
                     "consistent": consistent, "drain_secs": round(drain_secs, 3)},
            "vm_hwm_kb": hwm_kb,
        }),
        note: format!(
            "{label}: 2xx {}, jobs created {created}, succeeded {succeeded} (counters and store agree); queue drained {drain_secs:.2} s after the load; peak RSS {} MiB",
            run.ok(),
            hwm_kb.map(|k| k / 1024).unwrap_or(0)
        ),
        run,
    })
}

/// Scenario 1: wrk, 64 connections, 10 s (3 s quick) against the bare axum baseline, then
/// against millgate as shipped (default `info` logs, mimalloc), then `RUST_LOG=warn`, then the
/// builds named in [`OTHER_BUILDS`] (other allocators). Every variant must have completed
/// every job it accepted.
pub async fn throughput(ctx: &Ctx) -> BenchResult<Outcome> {
    if !wrk_available() {
        return Ok(Outcome::Skipped(
            "wrk not found (apt-get install wrk)".into(),
        ));
    }
    let secs = ctx.pick(10, 3);
    let conns = 64;
    let threads = 2;

    let bare = BareAxum::start()?;
    let url = format!("{}/hooks/bench", bare.base);
    wrk(ctx, &url, conns, 1, threads).await?;
    // The baseline serves from this process, which does nothing else meanwhile.
    let cpu0 = cpu_secs(std::process::id());
    let base = wrk(ctx, &url, conns, secs, threads).await?;
    let base_cpu_us = cpu_secs(std::process::id())
        .zip(cpu0)
        .map(|(b, a)| (b - a) * 1e6 / base.requests.max(1) as f64);
    drop(bare);

    let mut variants = vec![
        millgate_under_wrk(ctx, "millgate async", "webhook", &[], conns, secs, threads).await?,
        millgate_under_wrk(
            ctx,
            "millgate, RUST_LOG=warn",
            "webhook-warn",
            &[("RUST_LOG", "warn")],
            conns,
            secs,
            threads,
        )
        .await?,
    ];
    let others = std::env::var(OTHER_BUILDS).unwrap_or_default();
    for (name, bin) in others.split(',').filter_map(|b| b.split_once('=')) {
        variants.push(
            millgate_under_wrk(
                ctx,
                &format!("millgate, {name} allocator"),
                &format!("webhook-{name}"),
                &[(BIN_OVERRIDE, bin)],
                conns,
                secs,
                threads,
            )
            .await?,
        );
    }

    let mut r = Report::new(
        format!("POST /hooks/bench, wrk -t{threads} -c{conns} -d{secs}s"),
        vec![
            "",
            "2xx req/s",
            "ratio",
            "p50 ms",
            "p99 ms",
            "max ms",
            "non-2xx",
            "CPU us/req",
        ],
    );
    let us = |c: Option<f64>| c.map(f0).unwrap_or_else(|| "-".into());
    r.row(vec![
        "bare axum 202".into(),
        f0(base.ok_rps()),
        "1".into(),
        f2(base.p50),
        f2(base.p99),
        f2(base.max),
        base.non_2xx.to_string(),
        us(base_cpu_us),
    ]);
    for v in &variants {
        r.row(vec![
            v.label.clone(),
            f0(v.run.ok_rps()),
            format!("{:.3}", ratio(v.run.ok_rps(), base.ok_rps())),
            f2(v.run.p50),
            f2(v.run.p99),
            f2(v.run.max),
            v.run.non_2xx.to_string(),
            us(v.cpu_us),
        ]);
    }
    r.note("non-2xx are 429s: max_in_flight (1,000 jobs accepted and not yet settled) reached");
    r.note("CPU us/req: process CPU during the load, per request answered (baseline) or per job accepted (millgate)");
    r.note("target: ratio >= 0.5 for millgate as shipped (first millgate row)");
    for v in &variants {
        r.note(v.note.clone());
    }
    let shipped = &variants[0].run;
    r.figures = json!({
        "connections": conns, "secs": secs, "wrk_threads": threads,
        "baseline": base.json(),
        "baseline_cpu_us_per_request": base_cpu_us.map(|c| round(c, 1)),
        "millgate": variants[0].figures,
        "ratio_rps": ratio(shipped.ok_rps(), base.ok_rps()),
        "variants": variants.iter().map(|v| json!({
            "label": v.label, "ratio_rps": ratio(v.run.ok_rps(), base.ok_rps()),
            "figures": v.figures,
        })).collect::<Vec<_>>(),
    });
    Ok(Outcome::Done(r))
}

/// One request of the open-loop generator.
struct Sent {
    at: DateTime<Utc>,
    http_ms: f64,
    job_id: Option<JobId>,
}

/// Sends `rate` POSTs per second for `secs` seconds, each on its own task (open loop: a slow
/// answer does not slow the sending down).
async fn open_loop(url: &str, rate: u64, secs: u64) -> BenchResult<Vec<Sent>> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .ctx("client")?;
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    for i in 0..rate * secs {
        tick.tick().await;
        let client = client.clone();
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let at = Utc::now();
            let t = Instant::now();
            let resp = client
                .post(url)
                .bearer_auth(HOOK_TOKEN)
                .header("content-type", "application/json")
                .body(format!(r#"{{"name":"Ada","n":{i}}}"#))
                .send()
                .await;
            let body: Option<Value> = match resp {
                Ok(r) if r.status().is_success() => r.json().await.ok(),
                _ => None,
            };
            Sent {
                at,
                http_ms: t.elapsed().as_secs_f64() * 1000.0,
                job_id: body
                    .as_ref()
                    .and_then(|b| b["job_id"].as_str())
                    .and_then(|s| s.parse().ok()),
            }
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.ctx("request task")?);
    }
    Ok(out)
}

/// The disk's share: one 1 KB sled insert + flush, paced at `rate` per second, in a fresh
/// database on the same disk as millgate's store. Returns each flush's milliseconds.
fn flush_floor(rate: u64, secs: u64) -> BenchResult<Vec<f64>> {
    let dir = tempfile::tempdir().ctx("tempdir")?;
    let db = sled::Config::new()
        .path(dir.path().join("db"))
        .flush_every_ms(None)
        .open()
        .ctx("open sled")?;
    let value = vec![b'x'; 1024];
    let mut out = Vec::new();
    let start = Instant::now();
    for i in 0..rate * secs {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let t = Instant::now();
        db.insert(i.to_be_bytes(), value.clone()).ctx("insert")?;
        db.flush().ctx("flush")?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}

fn ms(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

/// Scenario 5: `rate` events/s (1,000; 10,000 for 5b) for 10 s (3 s quick) through an async
/// webhook; per job, from the
/// moment the client sent the request to the job's start (`started_at`: the router hands it to
/// the runner pool) and to its completion (`finished_at`: outcome recorded). The bare axum
/// baseline's HTTP latency at the same rate, same generator, is the floor of the first hop; a
/// sled insert + flush at the same rate on the same disk is the floor of the durable write
/// every accepted event waits for.
pub async fn latency(ctx: &Ctx, rate: u64) -> BenchResult<Outcome> {
    let secs = ctx.pick(10, 3);

    let bare = BareAxum::start()?;
    let base = open_loop(&format!("{}/hooks/bench", bare.base), rate, ctx.pick(5, 2)).await?;
    drop(bare);
    let base_http: Vec<f64> = base.iter().map(|s| s.http_ms).collect();
    let floor_secs = ctx.pick(5, 2);
    let flushes = tokio::task::spawn_blocking(move || flush_floor(rate, floor_secs))
        .await
        .ctx("flush probe")??;

    let m = Millgate::start(ctx, "latency", &config()).await?;
    m.wait_running("bench").await?;
    // Warm-up (connections, the store's first pages), on the other trigger.
    open_loop(&format!("{}/hooks/warm", m.base), rate, 1).await?;
    m.wait_drained("warm", Duration::from_secs(60)).await?;
    let started = Instant::now();
    let sent = open_loop(&format!("{}/hooks/bench", m.base), rate, secs).await?;
    let send_secs = started.elapsed().as_secs_f64();
    m.wait_drained("bench", Duration::from_secs(120)).await?;
    let dir = m.stop().await?;
    let records: HashMap<JobId, _> = stored_jobs(dir.path(), "bench")?
        .into_iter()
        .map(|r| (r.job_id, r))
        .collect();

    let mut http = Vec::new();
    let mut to_start = Vec::new();
    let mut to_done = Vec::new();
    let mut queued_to_start = Vec::new();
    let mut failed = 0;
    for s in &sent {
        http.push(s.http_ms);
        let Some(r) = s.job_id.and_then(|id| records.get(&id)) else {
            failed += 1;
            continue;
        };
        let (Some(start), Some(done)) = (r.started_at, r.finished_at) else {
            failed += 1;
            continue;
        };
        to_start.push(ms(start - s.at));
        to_done.push(ms(done - s.at));
        queued_to_start.push(ms(start - r.created_at));
    }
    let figures = json!({
        "rate": rate, "secs": secs, "sent": sent.len(), "send_secs": round(send_secs, 3),
        "without_job": failed,
        "baseline_http_ms": dist(base_http.clone()),
        "sled_flush_ms": dist(flushes.clone()),
        "millgate_http_ms": dist(http.clone()),
        "send_to_runner_start_ms": dist(to_start.clone()),
        "send_to_completion_ms": dist(to_done.clone()),
        "record_created_to_start_ms": dist(queued_to_start.clone()),
    });
    let mut r = Report::new(
        format!("{rate} events/s for {secs} s, async webhook -> echo (open loop)"),
        vec!["ms", "p50", "p99", "max"],
    );
    let mut row = |label: &str, mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        r.row(vec![
            label.into(),
            f2(pct(&v, 50.0)),
            f2(pct(&v, 99.0)),
            f2(v.last().copied().unwrap_or(f64::NAN)),
        ]);
    };
    row("bare axum: HTTP 202", base_http);
    row("sled 1 KB insert + flush (same disk)", flushes);
    row("millgate: HTTP 202 (durable)", http);
    row("send -> runner start", to_start.clone());
    let target = if rate > 1000 { 10 } else { 5 };
    row(
        &format!("send -> completion (target p99 <= {target})"),
        to_done,
    );
    row("record created -> start", queued_to_start);
    r.note(format!(
        "{} requests sent in {send_secs:.2} s; {failed} without a finished job",
        sent.len()
    ));
    r.figures = figures;
    if failed > 0 {
        return Err(format!("{failed} requests have no finished job"));
    }
    Ok(Outcome::Done(r))
}
