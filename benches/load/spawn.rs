//! Scenario 7: command runnable spawn rate. `true` as a command runnable at runner pool sizes
//! 1, 2 and 8. The jobs are queued first (the trigger suspended: parked), then released at
//! once, so the figure is the runners' alone; jobs/s from the records' start and finish times.
//! Baseline: the same number of `true` processes spawned by tokio with the same stdio (piped
//! stdin/stdout/stderr, own process group), the same number at once.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use millgate_actors::job::JobStatus;
use serde_json::json;

use crate::harness::{
    f0, ratio, round, stored_jobs, BenchResult, Context, Ctx, Millgate, Outcome, Report, HOOK_TOKEN,
};

/// `n` runs of `true` by `parallel` tasks (on the runtime's workers, as millgate's runners
/// are); returns runs per second.
async fn raw_spawns(n: usize, parallel: usize) -> BenchResult<f64> {
    let left = Arc::new(AtomicUsize::new(n));
    let start = Instant::now();
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            let left = left.clone();
            tokio::spawn(async move {
                while left
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| l.checked_sub(1))
                    .is_ok()
                {
                    let child = tokio::process::Command::new("true")
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .process_group(0)
                        .kill_on_drop(true)
                        .spawn()
                        .ctx("spawn true")?;
                    let out = child.wait_with_output().await.ctx("wait for true")?;
                    if !out.status.success() {
                        return Err(format!("true exited with {}", out.status));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.await.ctx("spawn task")??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// millgate with `runners` runners: `n` jobs parked, released, run; returns jobs per second.
async fn millgate_spawns(ctx: &Ctx, n: usize, runners: usize) -> BenchResult<(f64, f64)> {
    let config = format!(
        r#"
[router]
runners = {runners}

[runnables.true]
command = ["true"]

[[triggers]]
name = "spawn"
kind = "webhook"
runnable = "true"
token = "{HOOK_TOKEN}"
max_in_flight = {max}
"#,
        max = n + 100
    );
    let m = Millgate::start(ctx, &format!("spawn-{runners}"), &config).await?;
    m.wait_running("spawn").await?;
    m.api_post("/api/triggers/spawn/suspend").await?;
    let url = format!("{}/hooks/spawn", m.base);
    let client = ctx.client.clone();
    let answers: Vec<BenchResult<()>> = futures::stream::iter(0..n)
        .map(|i| {
            let req = client
                .post(&url)
                .bearer_auth(HOOK_TOKEN)
                .header("content-type", "application/json")
                .body(format!(r#"{{"n":{i}}}"#));
            async move {
                let r = req.send().await.ctx("post")?;
                if r.status().as_u16() != 202 {
                    return Err(format!("post: {}", r.status()));
                }
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    answers.into_iter().collect::<BenchResult<()>>()?;
    let parked = m.api("/api/triggers/spawn").await?["parked"]
        .as_u64()
        .unwrap_or(0);
    if parked != n as u64 {
        return Err(format!("{parked} jobs parked, expected {n}"));
    }
    let t0 = Instant::now();
    m.api_post("/api/triggers/spawn/resume").await?;
    m.wait_drained("spawn", Duration::from_secs(300)).await?;
    let wall = n as f64 / t0.elapsed().as_secs_f64();
    let dir = m.stop().await?;
    let jobs = stored_jobs(dir.path(), "spawn")?;
    let ok = jobs
        .iter()
        .filter(|j| j.status == JobStatus::Succeeded)
        .count();
    if ok != n {
        return Err(format!("{ok} of {n} jobs succeeded"));
    }
    let first = jobs
        .iter()
        .filter_map(|j| j.started_at)
        .min()
        .ctx("no start")?;
    let last = jobs
        .iter()
        .filter_map(|j| j.finished_at)
        .max()
        .ctx("no finish")?;
    let secs = (last - first).num_microseconds().unwrap_or(1) as f64 / 1e6;
    Ok((n as f64 / secs, wall))
}

pub async fn run(ctx: &Ctx) -> BenchResult<Outcome> {
    let n = ctx.pick(2000, 300);
    let mut r = Report::new(
        format!("{n} jobs of `true`, released at once"),
        vec![
            "runners",
            "raw spawns/s",
            "millgate jobs/s",
            "ratio",
            "wall jobs/s",
        ],
    );
    let mut rows = Vec::new();
    for runners in [1usize, 2, 8] {
        let base = raw_spawns(n, runners).await?;
        let (rate, wall) = millgate_spawns(ctx, n, runners).await?;
        let q = ratio(rate, base);
        r.row(vec![
            runners.to_string(),
            f0(base),
            f0(rate),
            format!("{q:.3}"),
            f0(wall),
        ]);
        rows.push(json!({
            "runners": runners, "baseline_spawns_per_sec": round(base, 1),
            "millgate_jobs_per_sec": round(rate, 1), "millgate_wall_jobs_per_sec": round(wall, 1),
            "ratio": q,
        }));
    }
    r.note("millgate jobs/s: first start to last finish in the job records; wall: resume call to all settled (20 ms polling)");
    r.figures = json!({"jobs": n, "pool_sizes": rows});
    Ok(Outcome::Done(r))
}
