//! Scenario 4: MQTT QoS 1 → noop runnable, manual acks. The same number of messages is
//! preloaded into two persistent sessions (`clean_session = false`); then each consumer
//! connects under its session's client id and drains it: the raw rumqttc subscriber acks every
//! message as it arrives (baseline), millgate's mqtt trigger acks once the job's outcome is
//! durable. The broker keeps its default window of 20 unacknowledged messages per client
//! (`max_inflight_messages`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use millgate_actors::triggers::mqtt::rumqttc;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde_json::json;

use crate::brokers;
use crate::harness::{
    cpu_secs, cpu_us_per, drain_report, round, unique, BenchResult, Context, Ctx, Drain, Millgate,
    Outcome,
};

const PAYLOAD: &[u8] =
    br#"{"sensor":"s-17","temp":21.5,"humidity":0.43,"at":"2026-11-27T10:00:00Z"}"#;

fn options(client_id: &str, port: u16, clean: bool) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(clean);
    o
}

/// Creates a persistent session subscribed to `topic` (QoS 1), then leaves it.
async fn create_session(port: u16, client_id: &str, topic: &str) -> BenchResult<()> {
    let (client, mut eventloop) = AsyncClient::new(options(client_id, port, false), 16);
    let work = async {
        loop {
            match eventloop.poll().await.ctx("session setup")? {
                Event::Incoming(Packet::ConnAck(_)) => client
                    .subscribe(topic, QoS::AtLeastOnce)
                    .await
                    .ctx("subscribe")?,
                Event::Incoming(Packet::SubAck(_)) => {
                    client.disconnect().await.ctx("disconnect")?
                }
                Event::Outgoing(Outgoing::Disconnect) => return Ok(()),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .ctx("session setup timed out")?
}

/// Publishes `n` QoS 1 messages and waits for every puback.
async fn preload(port: u16, topic: &str, n: u64) -> BenchResult<()> {
    let (client, mut eventloop) =
        AsyncClient::new(options(&unique("bench-pub-"), port, true), 1024);
    let acked = Arc::new(AtomicU64::new(0));
    let count = acked.clone();
    let driver = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    count.fetch_add(1, Ordering::AcqRel);
                }
                Ok(_) => {}
                Err(e) => return format!("publisher connection: {e}"),
            }
        }
    });
    for _ in 0..n {
        client
            .publish(topic, QoS::AtLeastOnce, false, PAYLOAD.to_vec())
            .await
            .ctx("publish")?;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while acked.load(Ordering::Acquire) < n {
        if driver.is_finished() {
            return Err(driver.await.unwrap_or_else(|e| e.to_string()));
        }
        if Instant::now() > deadline {
            return Err("preload not acknowledged in time".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = client.disconnect().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    driver.abort();
    Ok(())
}

/// The raw subscriber drains its session, acking each message as it arrives. Returns the
/// seconds from connecting to the last message.
async fn raw_drain(port: u16, client_id: &str, n: u64) -> BenchResult<f64> {
    let mut opts = options(client_id, port, false);
    opts.set_manual_acks(true);
    let t0 = Instant::now();
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let mut got = 0;
    let work = async {
        while got < n {
            if let Event::Incoming(Packet::Publish(p)) =
                eventloop.poll().await.ctx("subscriber connection")?
            {
                // The event loop is this task: never wait on its request channel here.
                if client.try_ack(&p).is_err() {
                    let c = client.clone();
                    tokio::spawn(async move { c.ack(&p).await });
                }
                got += 1;
            }
        }
        Ok::<_, String>(t0.elapsed().as_secs_f64())
    };
    let secs = tokio::time::timeout(Duration::from_secs(300), work)
        .await
        .ctx("raw subscriber timed out")??;
    // Let the last acks out, then leave. Never `disconnect().await` here: with the request
    // channel full of acks and nobody polling the event loop, it would wait forever.
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Ok(e) = eventloop.poll().await {
            if matches!(e, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    Ok(secs)
}

pub async fn run(ctx: &Ctx) -> BenchResult<Outcome> {
    let broker = match brokers::mosquitto(ctx) {
        Ok(b) => b,
        Err(why) => return Ok(Outcome::Skipped(why)),
    };
    let port = broker.port();
    // A shared broker keeps its default queue limit of 1,000 messages per session.
    let n: u64 = if broker.private {
        ctx.pick(20_000, 3_000)
    } else {
        900
    };
    let topic = format!("bench/{}/m", unique(""));
    let (raw_id, mg_id) = (unique("bench-raw-"), unique("bench-mg-"));
    create_session(port, &raw_id, &topic).await?;
    create_session(port, &mg_id, &topic).await?;
    let t = Instant::now();
    preload(port, &topic, n).await?;
    let preload_secs = t.elapsed().as_secs_f64();

    // Baseline.
    let me = std::process::id();
    let cpu0 = cpu_secs(me);
    let base_secs = raw_drain(port, &raw_id, n).await?;
    let base_cpu_us = cpu_us_per(cpu_secs(me), cpu0, n);

    // millgate: an mqtt trigger resuming the other session.
    let config = format!(
        r#"
[runnables.noop]
kind = "echo"

[[triggers]]
name = "mqtt"
kind = "mqtt"
runnable = "noop"
broker = "127.0.0.1"
port = {port}
client_id = "{mg_id}"
clean_session = false
subscriptions = [{{ topic = "{topic}", qos = 1 }}]
"#
    );
    let m = Millgate::start_env(
        ctx,
        "mqtt",
        &config,
        &[(crate::harness::DEFAULT_RETENTION, "1")],
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let t0 = loop {
        // Polled from the start: the session's messages flow right after the connection.
        let v = m.api("/api/triggers/mqtt").await?;
        // `source_status` (`schedule` before it was renamed).
        let status = if v["source_status"].is_null() {
            &v["schedule"]
        } else {
            &v["source_status"]
        };
        if status["connected"] == true {
            break Instant::now();
        }
        if Instant::now() > deadline {
            return Err(format!("millgate's mqtt trigger did not connect: {v}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let cpu0 = cpu_secs(m.pid());
    let mut progress = (0, Instant::now());
    let t1 = loop {
        let c = m.counters("mqtt").await?;
        let succeeded = c["jobs_succeeded"].as_u64().unwrap_or(0);
        if succeeded >= n {
            break Instant::now();
        }
        if succeeded > progress.0 {
            progress = (succeeded, Instant::now());
        } else if progress.1.elapsed() > Duration::from_secs(30) {
            return Err(format!("millgate stalled: {c} after {:?}", t0.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mg_cpu_us = cpu_us_per(cpu_secs(m.pid()), cpu0, n);
    let counters = m.wait_drained("mqtt", Duration::from_secs(30)).await?;
    let hwm_kb = m.status_kb("VmHWM");
    m.stop().await?;
    let mg_secs = (t1 - t0).as_secs_f64();
    let created = counters["jobs_created"].as_u64().unwrap_or(0);

    let base = Drain {
        label: "raw rumqttc subscriber, ack on arrival",
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
        "{n} MQTT QoS 1 messages ({} B) preloaded in a persistent session, broker window 20",
        PAYLOAD.len()
    );
    let (mut r, rate_ratio) = drain_report(title, &base, &mine, 0.5);
    r.note("CPU us/msg: the consuming process's CPU (the bench for the raw client, millgate) per message; the broker's is not counted");
    r.note(format!(
        "preload {preload_secs:.1} s; broker: {}; millgate jobs created {created} of {n}; peak RSS {} MiB",
        broker.describe(),
        hwm_kb.map(|k| k / 1024).unwrap_or(0)
    ));
    r.figures = json!({
        "messages": n, "payload_bytes": PAYLOAD.len(), "broker": broker.describe(),
        "preload_secs": round(preload_secs, 2),
        "baseline": base.figures(json!({})),
        "millgate": mine.figures(json!({"jobs_created": created, "vm_hwm_kb": hwm_kb})),
        "ratio": rate_ratio,
    });
    if created != n {
        return Err(format!("millgate created {created} jobs for {n} messages"));
    }
    Ok(Outcome::Done(r))
}
