//! End-to-end load scenarios (issue 6): the real `millgate` binary (release) against a baseline
//! measured in the same run, on the same machine, with the same load generator.
//!
//! ```sh
//! cargo bench --bench load                          # every scenario (~4 min on 2 cores)
//! cargo bench --bench load -- --quick               # shorter loads (or MILLGATE_BENCH_QUICK=1)
//! cargo bench --bench load -- webhook latency       # some scenarios, by name
//! ```
//!
//! | name | issue 6 | what |
//! | --- | --- | --- |
//! | `webhook` | 1 | wrk, 64 connections, 10 s: `POST /hooks/{name}` (async, echo) vs bare axum 202 |
//! | `nats` | 2 | 200k JetStream messages preloaded: nats trigger → echo vs raw pull consumer |
//! | `kafka` | 3 | 1M messages of 256 B on 4 partitions (tansu): kafka trigger → echo vs raw rdkafka consumer |
//! | `mqtt` | 4 | QoS 1, manual acks: mqtt trigger → echo vs raw rumqttc subscriber |
//! | `latency` | 5 | 1,000 webhook events/s for 10 s: send → runner start, → completion |
//! | `latency10k` | 5b | the same at 10,000 events/s |
//! | `footprint` | 6 | RSS with 0 / 1,000 / 10,000 webhook triggers, 100 NATS triggers |
//! | `spawn` | 7 | `true` as a command runnable at runner pool sizes 1, 2, 8 vs raw spawns |
//! | `sqs` | 13 | 1k messages preloaded in moto: sqs trigger → echo vs raw aws-sdk-sqs client |
//! | `pubsub` | 13 | 2k messages preloaded in pstest: pubsub trigger → echo vs raw gcloud-pubsub streaming pull |
//! | `postgres` | 14 | 50k committed rows on a private cluster: postgres trigger → echo vs the raw replication stream |
//!
//! Each scenario prints a table and writes `target/bench-results/<name>.json`; millgate's logs
//! go to `target/bench-results/logs/`. A scenario whose broker is not reachable prints
//! `skipped: <reason>` and the others run. Figures and what bounds them: BENCHMARKS.md.
//!
//! Adding a scenario: a module with `pub async fn run(ctx: &Ctx) -> BenchResult<Outcome>`
//! (skip when the broker is down, baseline and millgate back to back, a `Report`), and its
//! name in `SCENARIOS` and `run_one` below.
//!
//! Not a test: without cargo bench's `--bench` flag (as under `cargo test --benches`) it exits.

mod brokers;
mod footprint;
mod harness;
mod kafka;
mod mqtt;
mod nats;
mod postgres;
mod pubsub;
mod spawn;
mod sqs;
mod webhook;

use std::time::Instant;

use harness::{BenchResult, Ctx, Outcome};
use serde_json::json;

/// Every scenario, in issue 6's order.
const SCENARIOS: &[(&str, &str)] = &[
    ("webhook", "1. webhook, async, durable vs bare axum"),
    ("nats", "2. NATS JetStream -> noop vs raw pull consumer"),
    ("kafka", "3. Kafka -> noop vs raw rdkafka consumer"),
    ("mqtt", "4. MQTT QoS 1 -> noop vs raw rumqttc subscriber"),
    ("latency", "5. latency at 1,000 webhook events/s"),
    ("latency10k", "5b. latency at 10,000 webhook events/s"),
    ("footprint", "6. idle footprint (RSS)"),
    ("spawn", "7. command runnable spawn rate"),
    ("sqs", "8. SQS -> noop vs raw aws-sdk-sqs client"),
    (
        "pubsub",
        "9. Pub/Sub -> noop vs raw gcloud-pubsub streaming pull",
    ),
    (
        "postgres",
        "10. Postgres CDC -> noop vs the raw replication stream",
    ),
];

async fn run_one(name: &str, ctx: &Ctx) -> BenchResult<Outcome> {
    match name {
        "webhook" => webhook::throughput(ctx).await,
        "nats" => nats::run(ctx).await,
        "kafka" => kafka::run(ctx).await,
        "mqtt" => mqtt::run(ctx).await,
        "latency" => webhook::latency(ctx, 1000).await,
        "latency10k" => webhook::latency(ctx, 10_000).await,
        "footprint" => footprint::run(ctx).await,
        "spawn" => spawn::run(ctx).await,
        "sqs" => sqs::run(ctx).await,
        "pubsub" => pubsub::run(ctx).await,
        "postgres" => postgres::run(ctx).await,
        other => Err(format!("unknown scenario `{other}`")),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("load benchmarks run under `cargo bench --bench load` only; skipped");
        return;
    }
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("MILLGATE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let wanted: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    for w in &wanted {
        if !SCENARIOS.iter().any(|(n, _)| n == w) {
            let names: Vec<&str> = SCENARIOS.iter().map(|(n, _)| *n).collect();
            eprintln!("unknown scenario `{w}` (known: {})", names.join(", "));
            std::process::exit(2);
        }
    }
    // target/release/deps/load-<hash> → target/bench-results
    let results = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.parent()?.join("bench-results")))
        .unwrap_or_else(|| "target/bench-results".into());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let ctx = Ctx {
        quick,
        results,
        client: reqwest::Client::new(),
    };
    println!(
        "millgate load benchmarks{}; machine: {}",
        if quick { " (quick)" } else { "" },
        harness::machine()
    );
    let mut failed = false;
    for (name, title) in SCENARIOS {
        if !wanted.is_empty() && !wanted.contains(name) {
            continue;
        }
        println!("\n== {title} [{name}]");
        let machine = harness::machine();
        let start = Instant::now();
        let outcome = runtime.block_on(run_one(name, &ctx));
        let secs = harness::round(start.elapsed().as_secs_f64(), 1);
        let mut body = json!({
            "scenario": name, "title": title, "quick": quick, "machine": machine,
            "when": chrono::Utc::now().to_rfc3339(), "runtime_secs": secs,
        });
        match outcome {
            Ok(Outcome::Done(report)) => {
                report.print();
                body["figures"] = report.figures;
                body["table"] = json!({"header": report.header, "rows": report.rows});
                body["notes"] = json!(report.notes);
            }
            Ok(Outcome::Skipped(why)) => {
                println!("  skipped: {why}");
                body["skipped"] = json!(why);
            }
            Err(e) => {
                println!("  FAILED: {e}");
                body["failed"] = json!(e);
                failed = true;
            }
        }
        println!("  ({secs} s)");
        harness::write_result(&ctx, name, body);
    }
    println!("\nresults: {}", ctx.results.display());
    if failed {
        std::process::exit(1);
    }
}
