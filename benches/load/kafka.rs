//! Scenario 3: Kafka → noop runnable, commit after run, against a raw rdkafka consumer that
//! reads the same preloaded topic in its own group and commits its position as it goes.
//! The broker is the shared tansu (scripts/services.sh) on 127.0.0.1:9092.

use std::time::{Duration, Instant};

use millgate_actors::triggers::kafka::rdkafka;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message;
use serde_json::json;

use crate::harness::{
    f0, f2, ratio, reachable, round, unique, BenchResult, Context, Ctx, Millgate, Outcome, Report,
};

pub const ADDR: &str = "127.0.0.1:9092";
const PARTITIONS: i32 = 4;
const PAYLOAD_BYTES: usize = 256;

pub async fn run(ctx: &Ctx) -> BenchResult<Outcome> {
    if !reachable(ADDR) {
        return Ok(Outcome::Skipped(format!(
            "no Kafka broker on {ADDR} (scripts/services.sh starts tansu)"
        )));
    }
    let n: u64 = ctx.pick(1_000_000, 100_000);
    let topic = unique("bench-");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", ADDR)
        .create()
        .ctx("admin client")?;
    let created = admin
        .create_topics(
            &[NewTopic::new(
                &topic,
                PARTITIONS,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .ctx("create topic")?;
    for r in created {
        r.map_err(|(t, e)| format!("create topic {t}: {e}"))?;
    }
    let result = measure(ctx, &topic, n).await;
    let _ = admin.delete_topics(&[&topic], &AdminOptions::new()).await;
    result
}

/// Produces `n` messages of `PAYLOAD_BYTES`, spread over the partitions by key.
/// Returns the time it took and each partition's end (one past its last delivered offset).
async fn preload(topic: &str, n: u64) -> BenchResult<(f64, Vec<i64>)> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", ADDR)
        // One message per produce request: tansu (in memory) loses and repeats records of
        // batched produces at this volume (seen here: ~10% of 100k batched messages unreadable,
        // some offsets served twice), which a real Kafka does not.
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .set("max.in.flight.requests.per.connection", "1")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .ctx("producer")?;
    let start = Instant::now();
    // A JSON object padded to the payload size (`{"i":<12 digits>,"pad":"..."}` is 27 bytes
    // around the padding), so `data` is parsed as it would be in use.
    let pad = "x".repeat(PAYLOAD_BYTES - 27);
    let mut pending = Vec::with_capacity(10_000);
    let mut ends = vec![0i64; PARTITIONS as usize];
    for i in 0..n {
        let payload = format!(r#"{{"i":{i:>12},"pad":"{pad}"}}"#);
        let key = format!("k{}", i % 1024);
        match producer.send_result(FutureRecord::to(topic).payload(&payload).key(&key)) {
            Ok(f) => pending.push(f),
            Err((e, _)) => return Err(format!("produce: {e}")),
        }
        if pending.len() == 10_000 || i + 1 == n {
            // Wait for the deliveries; note each partition's end.
            for f in pending.drain(..) {
                let d = f
                    .await
                    .ctx("delivery")?
                    .map_err(|(e, _)| format!("delivery: {e}"))?;
                if let Some(e) = ends.get_mut(d.partition as usize) {
                    *e = (*e).max(d.offset + 1);
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .ctx("flush producer")?;
    Ok((start.elapsed().as_secs_f64(), ends))
}

/// The group's committed offsets, per partition (-1 when none).
fn committed(topic: &str, group: &str) -> BenchResult<Vec<i64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", ADDR)
        .set("group.id", group)
        .create()
        .ctx("consumer")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .ctx("committed offsets")?;
    Ok((0..PARTITIONS)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect())
}

/// Waits until the group committed every partition's end; returns when it saw it.
async fn wait_committed(
    topic: &str,
    group: &str,
    ends: &[i64],
    within: Duration,
) -> BenchResult<Instant> {
    let deadline = Instant::now() + within;
    loop {
        let (t, g) = (topic.to_string(), group.to_string());
        let got = tokio::task::spawn_blocking(move || committed(&t, &g))
            .await
            .ctx("join")??;
        if got.iter().zip(ends).all(|(c, e)| c >= e) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "group {group}: committed {got:?} of {ends:?} within {within:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The raw client: one group member reading every partition, committing its position every
/// second (as millgate's default `commit_interval` does) and at the end.
fn raw_consumer(topic: &str, group: &str, ends: &[i64]) -> BenchResult<()> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", ADDR)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .create()
        .ctx("consumer")?;
    c.subscribe(&[topic]).ctx("subscribe")?;
    let mut next = vec![-1i64; PARTITIONS as usize];
    let mut last_commit = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(600);
    let commit = |next: &[i64], mode: CommitMode| -> BenchResult<()> {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in next.iter().enumerate() {
            if *o >= 0 {
                tpl.add_partition_offset(topic, p as i32, Offset::Offset(*o))
                    .ctx("commit list")?;
            }
        }
        if tpl.count() > 0 {
            c.commit(&tpl, mode).ctx("commit")?;
        }
        Ok(())
    };
    while next.iter().zip(ends).any(|(n, e)| n < e) {
        if Instant::now() > deadline {
            return Err(format!(
                "raw consumer reached {next:?} of {ends:?} within 600 s"
            ));
        }
        match c.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                // Touch the payload, as millgate does (it base64-encodes and parses it).
                std::hint::black_box(m.payload().map(<[u8]>::len));
                next[m.partition() as usize] = m.offset() + 1;
            }
            Some(Err(e)) => return Err(format!("raw consumer: {e}")),
        }
        if last_commit.elapsed() >= Duration::from_secs(1) {
            commit(&next, CommitMode::Async)?;
            last_commit = Instant::now();
        }
    }
    commit(&next, CommitMode::Sync)?;
    c.unsubscribe();
    Ok(())
}

async fn measure(ctx: &Ctx, topic: &str, n: u64) -> BenchResult<Outcome> {
    // The ends come from the delivery reports: tansu's reported watermarks trail (and at
    // times undercount) what it holds.
    let (preload_secs, ends) = preload(topic, n).await?;

    // Baseline.
    let group = format!("{topic}-raw");
    let t0 = Instant::now();
    let (t, g, e) = (topic.to_string(), group.clone(), ends.clone());
    tokio::task::spawn_blocking(move || raw_consumer(&t, &g, &e))
        .await
        .ctx("join")??;
    let t1 = wait_committed(topic, &group, &ends, Duration::from_secs(120)).await?;
    let base_secs = (t1 - t0).as_secs_f64();
    let base_rate = n as f64 / base_secs;

    // millgate: a Kafka trigger on the same topic, its own group, per-partition order (the
    // default), the in-process echo runnable.
    let mg_group = format!("{topic}-millgate");
    let config = format!(
        r#"
[runnables.noop]
kind = "echo"

[[triggers]]
name = "kafka"
kind = "kafka"
runnable = "noop"
brokers = ["{ADDR}"]
topics = ["{topic}"]
group_id = "{mg_group}"
auto_offset_reset = "earliest"
"#
    );
    let m = Millgate::start_env(
        ctx,
        "kafka",
        &config,
        &[(crate::harness::DEFAULT_RETENTION, "1")],
    )
    .await?;
    m.wait_running("kafka").await?;
    let t0 = Instant::now();
    let t1 = wait_committed(topic, &mg_group, &ends, Duration::from_secs(1800)).await?;
    let mg_secs = (t1 - t0).as_secs_f64();
    let mg_rate = n as f64 / mg_secs;
    let counters = m.wait_drained("kafka", Duration::from_secs(60)).await?;
    let hwm_kb = m.status_kb("VmHWM");
    m.stop().await?;
    let count = |k: &str| counters[k].as_u64().unwrap_or(0);
    let (succeeded, received, duplicate) = (
        count("jobs_succeeded"),
        count("events_received"),
        count("events_duplicate"),
    );

    let rate_ratio = ratio(mg_rate, base_rate);
    let mut r = Report::new(
        format!("{n} messages of {PAYLOAD_BYTES} B on {PARTITIONS} partitions, preloaded (tansu)"),
        vec!["", "msgs/s", "secs"],
    );
    r.row(vec![
        "raw rdkafka consumer, read + commit".into(),
        f0(base_rate),
        f2(base_secs),
    ]);
    r.row(vec![
        "millgate trigger -> echo, commit after run".into(),
        f0(mg_rate),
        f2(mg_secs),
    ]);
    r.row(vec![
        "ratio (target >= 0.8)".into(),
        format!("{rate_ratio:.3}"),
        String::new(),
    ]);
    r.note(format!(
        "preload {preload_secs:.1} s; millgate read {received} messages, {duplicate} of them an offset it had already read (deduplicated), {succeeded} jobs succeeded; peak RSS {} MiB (default retention: max_jobs 100000)",
        hwm_kb.map(|k| k / 1024).unwrap_or(0)
    ));
    if duplicate > 0 {
        r.note("tansu serves some offsets twice (same partition, offset and timestamp) after batched produces; a real Kafka does not");
    }
    r.figures = json!({
        "messages": n, "payload_bytes": PAYLOAD_BYTES, "partitions": PARTITIONS,
        "preload_secs": round(preload_secs, 2),
        "baseline": {"secs": round(base_secs, 3), "msgs_per_sec": round(base_rate, 1)},
        "millgate": {"secs": round(mg_secs, 3), "msgs_per_sec": round(mg_rate, 1),
                     "jobs_succeeded": succeeded, "events_received": received,
                     "events_duplicate": duplicate, "vm_hwm_kb": hwm_kb},
        "ratio": rate_ratio,
    });
    // Every message read became a job or was recognised as one read before: nothing lost.
    if succeeded + duplicate != received || received < n {
        return Err(format!(
            "millgate read {received} messages ({duplicate} duplicates) of {n} and {succeeded} jobs succeeded"
        ));
    }
    Ok(Outcome::Done(r))
}
