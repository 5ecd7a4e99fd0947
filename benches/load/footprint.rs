//! Scenario 6: idle footprint. RSS (`/proc/<pid>/status` VmRSS) of `millgate run` with 0,
//! 1,000 and 10,000 webhook triggers, and with 100 NATS triggers (core subscriptions, one
//! connection each); bytes per trigger over the 0-trigger process (the baseline).

use std::time::{Duration, Instant};

use millgate_actors::triggers::nats::async_nats;
use serde_json::json;

use crate::harness::{f2, round, unique, BenchResult, Context, Ctx, Millgate, Outcome, Report};

const NOOP: &str = "[runnables.noop]\nkind = \"echo\"\n";

fn webhooks(n: usize) -> String {
    let mut s = String::from(NOOP);
    for i in 0..n {
        s.push_str(&format!(
            "\n[[triggers]]\nname = \"hook-{i}\"\nkind = \"webhook\"\nrunnable = \"noop\"\ntoken = \"token-{i}\"\n"
        ));
    }
    s
}

fn nats_triggers(n: usize, prefix: &str, addr: &str) -> String {
    let mut s = String::from(NOOP);
    for i in 0..n {
        s.push_str(&format!(
            "\n[[triggers]]\nname = \"nats-{i}\"\nkind = \"nats\"\nrunnable = \"noop\"\nservers = [\"{addr}\"]\nsubjects = [\"{prefix}.{i}\"]\n"
        ));
    }
    s
}

struct Sample {
    label: String,
    triggers: usize,
    start_secs: f64,
    rss_kb: u64,
    hwm_kb: u64,
}

/// Starts millgate, lets it settle, and reads its memory. The admin API is not called before
/// the reading (listing 10,000 triggers would itself allocate).
async fn sample(
    ctx: &Ctx,
    label: &str,
    triggers: usize,
    body: &str,
) -> BenchResult<(Sample, Millgate)> {
    let m = Millgate::start(ctx, &format!("footprint-{label}"), body).await?;
    let start_secs = m.started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut rss = Vec::new();
    for _ in 0..5 {
        rss.push(m.status_kb("VmRSS").ctx("VmRSS")?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rss.sort_unstable();
    let s = Sample {
        label: label.to_string(),
        triggers,
        start_secs,
        rss_kb: rss[rss.len() / 2],
        hwm_kb: m.status_kb("VmHWM").unwrap_or(0),
    };
    Ok((s, m))
}

pub async fn run(ctx: &Ctx) -> BenchResult<Outcome> {
    let mut samples = Vec::new();
    for n in [0usize, 1_000, 10_000] {
        let (s, m) = sample(ctx, &format!("{n}-webhooks"), n, &webhooks(n)).await?;
        if n > 0 {
            let v = m.api("/api/triggers/hook-0").await?;
            if v["state"] != "running" {
                return Err(format!("hook-0 is not running: {v}"));
            }
        }
        m.stop().await?;
        samples.push(s);
    }
    let nats_note = match crate::brokers::nats(ctx) {
        Err(why) => format!("100 NATS triggers skipped: {why}"),
        Ok(broker) => {
            let prefix = unique("bench_idle_");
            let body = nats_triggers(100, &prefix, &broker.addr);
            let (s, m) = sample(ctx, "100-nats", 100, &body).await?;
            // Every trigger subscribed? One message each, after the reading.
            let client = async_nats::connect(&broker.addr)
                .await
                .ctx("connect to NATS")?;
            for i in 0..100 {
                client
                    .publish(format!("{prefix}.{i}"), "{}".into())
                    .await
                    .ctx("publish")?;
            }
            client.flush().await.ctx("flush")?;
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut connected = 0;
            while Instant::now() < deadline {
                let v = m.api("/api/triggers").await?;
                connected = v["triggers"]
                    .as_array()
                    .map(|ts| {
                        ts.iter()
                            .filter(|t| t["counters"]["events_received"].as_u64().unwrap_or(0) >= 1)
                            .count()
                    })
                    .unwrap_or(0);
                if connected == 100 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            m.stop().await?;
            samples.push(s);
            format!(
                "{connected} of 100 NATS triggers received their test message ({})",
                broker.describe()
            )
        }
    };

    let base = samples.first().map(|s| s.rss_kb).unwrap_or(0);
    let mut r = Report::new(
        "millgate run, idle, 2 s after start",
        vec![
            "triggers",
            "RSS MiB",
            "peak MiB",
            "start s",
            "bytes/trigger",
        ],
    );
    let mut rows = Vec::new();
    for s in &samples {
        let per = (s.triggers > 0)
            .then(|| (s.rss_kb.saturating_sub(base) * 1024) as f64 / s.triggers as f64);
        r.row(vec![
            s.label.clone(),
            f2(s.rss_kb as f64 / 1024.0),
            f2(s.hwm_kb as f64 / 1024.0),
            f2(s.start_secs),
            per.map(|b| format!("{b:.0}")).unwrap_or_else(|| "-".into()),
        ]);
        rows.push(json!({
            "label": s.label, "triggers": s.triggers, "rss_kb": s.rss_kb, "hwm_kb": s.hwm_kb,
            "start_secs": round(s.start_secs, 3), "bytes_per_trigger": per.map(|b| b.round()),
        }));
    }
    r.note("target: <= 30 KB (30720 B) per idle webhook trigger");
    r.note(nats_note);
    r.figures = json!({"samples": rows, "target_bytes_per_webhook": 30 * 1024});
    Ok(Outcome::Done(r))
}
