//! Scenario 9: Pub/Sub → noop runnable, ack after run, against a raw gcloud-pubsub streaming
//! pull that acks what it receives in batches, on the same pstest server (127.0.0.1:8085,
//! `scripts/services.sh`). pstest hands out one message per stream response and bounds both
//! sides, which the ratio compares like for like; Google's service would give other figures.

use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use millgate_actors::triggers::pubsub::gcloud_gax::conn::Environment;
use millgate_actors::triggers::pubsub::gcloud_googleapis::pubsub::v1::PubsubMessage;
use millgate_actors::triggers::pubsub::gcloud_pubsub::client::{Client, ClientConfig};
use millgate_actors::triggers::pubsub::gcloud_pubsub::subscriber::SubscriberConfig;
use millgate_actors::triggers::pubsub::gcloud_pubsub::subscription::{
    SubscribeConfig, SubscriptionConfig,
};
use serde_json::json;

use crate::harness::{
    cpu_secs, cpu_us_per, drain_report, reachable, round, unique, BenchResult, Context, Ctx, Drain,
    Millgate, Outcome,
};

const PSTEST: &str = "127.0.0.1:8085";
const PROJECT: &str = "millgate-bench";
const PAYLOAD: &str =
    r#"{"order":"ord_123","amount":42.5,"customer":"cus_9","items":[{"sku":"a","qty":1}]}"#;

async fn client() -> BenchResult<Client> {
    Client::new(ClientConfig {
        project_id: Some(PROJECT.into()),
        environment: Environment::Emulator(PSTEST.into()),
        ..ClientConfig::default()
    })
    .await
    .ctx("connect to pstest")
}

/// A topic with one subscription, both named `name`, holding `n` messages.
async fn preload(c: &Client, name: &str, n: u64) -> BenchResult<()> {
    c.create_topic(name, None, None).await.ctx("create topic")?;
    let cfg = SubscriptionConfig {
        ack_deadline_seconds: 60,
        ..SubscriptionConfig::default()
    };
    c.create_subscription(name, name, cfg, None)
        .await
        .ctx("create subscription")?;
    let mut publisher = c.topic(name).new_publisher(None);
    let mut sent = 0;
    while sent < n {
        let k = (n - sent).min(500);
        let batch = (0..k)
            .map(|_| PubsubMessage {
                data: PAYLOAD.as_bytes().to_vec(),
                ..PubsubMessage::default()
            })
            .collect();
        for awaiter in publisher.publish_bulk(batch).await {
            awaiter.get().await.ctx("publish")?;
        }
        sent += k;
    }
    publisher.shutdown().await;
    Ok(())
}

/// The raw client: one streaming pull, every message acked, acks sent in batches of what has
/// arrived, until `n` are acked.
async fn raw_client(c: &Client, name: &str, n: u64) -> BenchResult<()> {
    let sub = c.subscription(name);
    let cfg = SubscriberConfig {
        max_outstanding_messages: 1000,
        stream_ack_deadline_seconds: 60,
        ..SubscriberConfig::default()
    };
    let mut stream = sub
        .subscribe(Some(SubscribeConfig::default().with_subscriber_config(cfg)))
        .await
        .ctx("subscribe")?;
    let mut acked = 0;
    while acked < n {
        let first = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .ctx("no message for 60 s")?
            .ok_or("the stream ended")?;
        let mut ids = vec![first.ack_id];
        while let Some(Some(m)) = stream.next().now_or_never() {
            ids.push(m.ack_id);
        }
        acked += ids.len() as u64;
        sub.ack(ids).await.ctx("ack")?;
    }
    stream.dispose().await;
    Ok(())
}

pub async fn run(ctx: &Ctx) -> BenchResult<Outcome> {
    if !reachable(PSTEST) {
        return Ok(Outcome::Skipped(format!(
            "no Pub/Sub emulator on {PSTEST} (scripts/services.sh starts pstest)"
        )));
    }
    let n: u64 = ctx.pick(2_000, 500);
    let c = client().await?;
    let base = unique("bench-raw");
    let mine = unique("bench-mg");

    let preload_start = Instant::now();
    preload(&c, &base, n).await?;
    let preload_secs = preload_start.elapsed().as_secs_f64();
    let me = std::process::id();
    let cpu0 = cpu_secs(me);
    let t0 = Instant::now();
    raw_client(&c, &base, n).await?;
    let base_secs = t0.elapsed().as_secs_f64();
    let base_cpu_us = cpu_us_per(cpu_secs(me), cpu0, n);

    preload(&c, &mine, n).await?;
    let config = format!(
        r#"
[runnables.noop]
kind = "echo"

[[triggers]]
name = "ps"
kind = "pubsub"
runnable = "noop"
project = "{PROJECT}"
subscription = "{mine}"
endpoint = "{PSTEST}"
max_in_flight = 1000
"#
    );
    let m = Millgate::start_env(
        ctx,
        "pubsub",
        &config,
        &[(crate::harness::DEFAULT_RETENTION, "1")],
    )
    .await?;
    let cpu0 = cpu_secs(m.pid());
    let t0 = Instant::now();
    m.wait_succeeded("ps", n, Duration::from_secs(600)).await?;
    let mg_secs = t0.elapsed().as_secs_f64();
    let mg_cpu_us = cpu_us_per(cpu_secs(m.pid()), cpu0, n);
    let counters = m.wait_drained("ps", Duration::from_secs(60)).await?;
    let hwm_kb = m.status_kb("VmHWM");
    m.stop().await?;
    let succeeded = counters["jobs_succeeded"].as_u64().unwrap_or(0);
    let received = counters["events_received"].as_u64().unwrap_or(0);

    let base = Drain {
        label: "raw streaming pull, batched acks",
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
        "{n} Pub/Sub messages preloaded ({} B) in pstest",
        PAYLOAD.len()
    );
    let (mut r, rate_ratio) = drain_report(title, &base, &mine, 0.8);
    r.note("pstest (one message per stream response) bounds both sides; millgate's time starts once it answers /healthz: it includes connecting and opening the stream, and ends when the last job succeeded (its ack leaves within 20 ms)");
    r.note(format!(
        "preload {preload_secs:.1} s; millgate received {received}, jobs succeeded {succeeded} of {n}; peak RSS {} MiB",
        hwm_kb.map(|k| k / 1024).unwrap_or(0)
    ));
    r.figures = json!({
        "messages": n, "payload_bytes": PAYLOAD.len(), "preload_secs": round(preload_secs, 2),
        "baseline": base.figures(json!({})),
        "millgate": mine.figures(json!({"events_received": received,
                                        "jobs_succeeded": succeeded, "vm_hwm_kb": hwm_kb})),
        "ratio": rate_ratio,
    });
    if succeeded != n {
        return Err(format!(
            "millgate succeeded {succeeded} jobs of {n} messages"
        ));
    }
    Ok(Outcome::Done(r))
}
