//! Scenario 2: NATS JetStream → noop runnable, ack after run, against a raw async-nats pull
//! consumer fetching and acking the same preloaded stream with the same consumer settings.

use std::time::{Duration, Instant};

use futures::StreamExt;
use millgate_actors::triggers::nats::async_nats;
use serde_json::json;

use async_nats::jetstream::{self, consumer::pull};

use crate::brokers;
use crate::harness::{
    cpu_secs, cpu_us_per, drain_report, round, unique, BenchResult, Context, Ctx, Drain, Millgate,
    Outcome,
};

/// millgate's defaults for a JetStream trigger, used by the baseline too.
const BATCH: usize = 64;
const MAX_ACK_PENDING: i64 = 1000;
const PAYLOAD: &[u8] =
    br#"{"order":"ord_123","amount":42.5,"customer":"cus_9","items":[{"sku":"a","qty":1}]}"#;

/// Polls the consumer until every message up to `last` is acknowledged; returns when it saw it.
async fn wait_acked(
    stream: &jetstream::stream::Stream,
    consumer: &str,
    last: u64,
    within: Duration,
) -> BenchResult<Instant> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(info) = stream.consumer_info(consumer).await {
            if info.ack_floor.stream_sequence >= last && info.num_ack_pending == 0 {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "consumer {consumer}: acked up to {} of {last} within {within:?}",
                    info.ack_floor.stream_sequence
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the consumer exists (millgate creates it when its trigger starts).
async fn wait_consumer(stream: &jetstream::stream::Stream, consumer: &str) -> BenchResult<Instant> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if stream.consumer_info(consumer).await.is_ok() {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!("consumer {consumer} never appeared"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The raw client: fetch batches, ack each message, until `n` are acked.
async fn raw_consumer(stream: &jetstream::stream::Stream, n: u64) -> BenchResult<()> {
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: MAX_ACK_PENDING,
            ..Default::default()
        })
        .await
        .ctx("create the raw consumer")?;
    let mut got = 0;
    while got < n {
        // Never more than what is left: a batch asking for more waits for `expires`.
        let mut batch = consumer
            .batch()
            .max_messages(BATCH.min((n - got) as usize))
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .ctx("fetch")?;
        while let Some(msg) = batch.next().await {
            let msg = msg.ctx("fetch")?;
            msg.ack().await.ctx("ack")?;
            got += 1;
        }
    }
    Ok(())
}

pub async fn run(ctx: &Ctx) -> BenchResult<Outcome> {
    let broker = match brokers::nats(ctx) {
        Ok(b) => b,
        Err(why) => return Ok(Outcome::Skipped(why)),
    };
    let addr = broker.addr.clone();
    let n: u64 = ctx.pick(200_000, 20_000);
    let client = async_nats::connect(&addr).await.ctx("connect to NATS")?;
    let js = jetstream::new(client.clone());
    let name = unique("BENCH_");
    let subject = format!("{}.orders", name.to_lowercase());
    // A private server takes a moment to have JetStream ready.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        let created = js
            .create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![format!("{}.>", name.to_lowercase())],
                max_age: Duration::from_secs(1800),
                ..Default::default()
            })
            .await;
        match created {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => {
                return Ok(Outcome::Skipped(format!(
                    "cannot create a JetStream stream on {addr} (is -js on?): {e}"
                )))
            }
        }
    };
    let mut result = measure(ctx, &js, &mut stream, &name, &subject, n, &addr).await;
    if let Ok(Outcome::Done(r)) = &mut result {
        r.note(format!("broker: {}", broker.describe()));
        r.figures["broker"] = serde_json::json!(broker.describe());
    }
    if let Err(e) = js.delete_stream(&name).await {
        eprintln!("could not delete stream {name}: {e}");
    }
    result
}

async fn measure(
    ctx: &Ctx,
    js: &jetstream::Context,
    stream: &mut jetstream::stream::Stream,
    name: &str,
    subject: &str,
    n: u64,
    addr: &str,
) -> BenchResult<Outcome> {
    let preload_start = Instant::now();
    let mut acks = Vec::with_capacity(1000);
    for _ in 0..n {
        acks.push(
            js.publish(subject.to_string(), PAYLOAD.into())
                .await
                .ctx("publish")?,
        );
        if acks.len() == 1000 {
            for a in acks.drain(..) {
                a.await.ctx("publish ack")?;
            }
        }
    }
    for a in acks.drain(..) {
        a.await.ctx("publish ack")?;
    }
    let preload_secs = preload_start.elapsed().as_secs_f64();
    let last = stream.info().await.ctx("stream info")?.state.last_sequence;

    // Baseline.
    let t0 = Instant::now();
    let me = std::process::id();
    let cpu0 = cpu_secs(me);
    raw_consumer(stream, n).await?;
    let t1 = wait_acked(stream, "raw", last, Duration::from_secs(300)).await?;
    let base_cpu_us = cpu_us_per(cpu_secs(me), cpu0, n);
    let base_secs = (t1 - t0).as_secs_f64();

    // millgate: a JetStream trigger on the same stream, its own durable consumer.
    let config = format!(
        r#"
[runnables.noop]
kind = "echo"

[[triggers]]
name = "js"
kind = "nats"
runnable = "noop"
servers = ["{addr}"]
jetstream = {{ stream = "{name}", consumer = "millgate_bench" }}
"#
    );
    let m = Millgate::start_env(
        ctx,
        "nats",
        &config,
        &[(crate::harness::DEFAULT_RETENTION, "1")],
    )
    .await?;
    let t0 = wait_consumer(stream, "millgate_bench").await?;
    let cpu0 = cpu_secs(m.pid());
    let t1 = wait_acked(stream, "millgate_bench", last, Duration::from_secs(900)).await?;
    let mg_cpu_us = cpu_us_per(cpu_secs(m.pid()), cpu0, n);
    let mg_secs = (t1 - t0).as_secs_f64();
    let counters = m.wait_drained("js", Duration::from_secs(60)).await?;
    let hwm_kb = m.status_kb("VmHWM");
    m.stop().await?;
    let succeeded = counters["jobs_succeeded"].as_u64().unwrap_or(0);

    let base = Drain {
        label: "raw pull consumer, fetch + ack",
        messages: n,
        secs: base_secs,
        cpu_us: base_cpu_us,
    };
    let mine = Drain {
        label: "millgate trigger -> echo, ack after run",
        messages: n,
        secs: mg_secs,
        cpu_us: mg_cpu_us,
    };
    let title = format!(
        "{n} JetStream messages preloaded ({} B), batch {BATCH}, max_ack_pending {MAX_ACK_PENDING}",
        PAYLOAD.len()
    );
    let (mut r, rate_ratio) = drain_report(title, &base, &mine, 0.8);
    r.note("CPU us/msg: the consuming process's CPU (the bench for the raw client, millgate) per message; the broker's is not counted");
    r.note(format!(
        "preload {preload_secs:.1} s; millgate jobs succeeded {succeeded} of {n}; peak RSS {} MiB (default retention)",
        hwm_kb.map(|k| k / 1024).unwrap_or(0)
    ));
    r.figures = json!({
        "messages": n, "payload_bytes": PAYLOAD.len(), "batch": BATCH,
        "max_ack_pending": MAX_ACK_PENDING, "preload_secs": round(preload_secs, 2),
        "baseline": base.figures(json!({})),
        "millgate": mine.figures(json!({"jobs_succeeded": succeeded, "vm_hwm_kb": hwm_kb})),
        "ratio": rate_ratio,
    });
    if succeeded != n {
        return Err(format!(
            "millgate succeeded {succeeded} jobs of {n} messages"
        ));
    }
    Ok(Outcome::Done(r))
}
