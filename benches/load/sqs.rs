//! Scenario 8: SQS → noop runnable, delete after run, against a raw aws-sdk-sqs client
//! receiving and deleting the same number of messages from the same server (moto on
//! 127.0.0.1:4566, `scripts/services.sh`). moto is a single Python process: both sides are
//! bound by it, which the ratio compares like for like; real SQS's figures would differ.

use std::time::{Duration, Instant};

use millgate_actors::triggers::sqs::aws_sdk_sqs;
use serde_json::json;

use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, QueueAttributeName, SendMessageBatchRequestEntry,
};

use crate::harness::{
    cpu_secs, cpu_us_per, drain_report, reachable, round, unique, BenchResult, Context, Ctx, Drain,
    Millgate, Outcome,
};

const MOTO: &str = "127.0.0.1:4566";
const PAYLOAD: &str =
    r#"{"order":"ord_123","amount":42.5,"customer":"cus_9","items":[{"sku":"a","qty":1}]}"#;

fn client() -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .endpoint_url(format!("http://{MOTO}"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "bench",
        ))
        .build();
    aws_sdk_sqs::Client::from_conf(conf)
}

async fn preload(c: &aws_sdk_sqs::Client, url: &str, n: u64) -> BenchResult<()> {
    let mut sent = 0;
    while sent < n {
        let k = (n - sent).min(10);
        let entries = (0..k)
            .map(|i| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(PAYLOAD)
                    .build()
                    .ctx("entry")
            })
            .collect::<BenchResult<Vec<_>>>()?;
        c.send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .ctx("send batch")?;
        sent += k;
    }
    Ok(())
}

/// Visible plus in-flight messages.
async fn remaining(c: &aws_sdk_sqs::Client, url: &str) -> BenchResult<u64> {
    let out = c
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .ctx("queue attributes")?;
    let get = |k: QueueAttributeName| -> u64 {
        out.attributes()
            .and_then(|a| a.get(&k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX / 4)
    };
    Ok(get(QueueAttributeName::ApproximateNumberOfMessages)
        + get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible))
}

/// The raw client: receive 10, delete them in one batch, until `n` are deleted.
async fn raw_client(c: &aws_sdk_sqs::Client, url: &str, n: u64) -> BenchResult<()> {
    let mut deleted = 0;
    while deleted < n {
        let got = c
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .ctx("receive")?;
        let entries = got
            .messages()
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .set_receipt_handle(m.receipt_handle().map(str::to_string))
                    .build()
                    .ok()
            })
            .collect::<Vec<_>>();
        if entries.is_empty() {
            continue;
        }
        let out = c
            .delete_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .ctx("delete")?;
        deleted += out.successful().len() as u64;
    }
    Ok(())
}

pub async fn run(ctx: &Ctx) -> BenchResult<Outcome> {
    if !reachable(MOTO) {
        return Ok(Outcome::Skipped(format!(
            "no SQS server on {MOTO} (scripts/services.sh starts moto)"
        )));
    }
    // moto slows down with deep queues (seen here: 10k messages took it minutes): kept small.
    let n: u64 = ctx.pick(1_000, 300);
    let c = client();
    let base_url = c
        .create_queue()
        .queue_name(unique("bench-raw"))
        .send()
        .await
        .ctx("create queue")?
        .queue_url()
        .unwrap_or_default()
        .to_string();
    let mg_url = c
        .create_queue()
        .queue_name(unique("bench-mg"))
        .send()
        .await
        .ctx("create queue")?
        .queue_url()
        .unwrap_or_default()
        .to_string();
    let result = measure(ctx, &c, &base_url, &mg_url, n).await;
    for url in [&base_url, &mg_url] {
        let _ = c.delete_queue().queue_url(url).send().await;
    }
    result
}

async fn measure(
    ctx: &Ctx,
    c: &aws_sdk_sqs::Client,
    base_url: &str,
    mg_url: &str,
    n: u64,
) -> BenchResult<Outcome> {
    let preload_start = Instant::now();
    preload(c, base_url, n).await?;
    let preload_secs = preload_start.elapsed().as_secs_f64();

    let me = std::process::id();
    let cpu0 = cpu_secs(me);
    let t0 = Instant::now();
    raw_client(c, base_url, n).await?;
    let base_secs = t0.elapsed().as_secs_f64();
    let base_cpu_us = cpu_us_per(cpu_secs(me), cpu0, n);
    // Loaded only now, so that the baseline's queue and this one are never deep at once.
    preload(c, mg_url, n).await?;

    let config = format!(
        r#"
[runnables.noop]
kind = "echo"

[[triggers]]
name = "q"
kind = "sqs"
runnable = "noop"
queue_url = "{mg_url}"
endpoint_url = "http://{MOTO}"
region = "us-east-1"
auth = {{ access_key_id = "test", secret_access_key = "test" }}
wait_time = "1s"
"#
    );
    let m = Millgate::start_env(
        ctx,
        "sqs",
        &config,
        &[(crate::harness::DEFAULT_RETENTION, "1")],
    )
    .await?;
    let cpu0 = cpu_secs(m.pid());
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(600);
    while remaining(c, mg_url).await? > 0 {
        if Instant::now() > deadline {
            return Err("millgate left messages in the queue after 600 s".into());
        }
        // Not more often: every call also loads moto, which bounds millgate's own calls.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mg_secs = t0.elapsed().as_secs_f64();
    let mg_cpu_us = cpu_us_per(cpu_secs(m.pid()), cpu0, n);
    let counters = m.wait_drained("q", Duration::from_secs(60)).await?;
    let hwm_kb = m.status_kb("VmHWM");
    m.stop().await?;
    let succeeded = counters["jobs_succeeded"].as_u64().unwrap_or(0);

    let base = Drain {
        label: "raw client, receive 10 + delete batch",
        messages: n,
        secs: base_secs,
        cpu_us: base_cpu_us,
    };
    let mine = Drain {
        label: "millgate trigger -> echo, delete after run",
        messages: n,
        secs: mg_secs,
        cpu_us: mg_cpu_us,
    };
    let title = format!("{n} SQS messages preloaded ({} B) in moto", PAYLOAD.len());
    let (mut r, rate_ratio) = drain_report(title, &base, &mine, 0.8);
    r.note("moto (one Python process) bounds both sides; millgate's time starts once it answers /healthz: it includes connecting to the queue");
    r.note(format!(
        "preload {preload_secs:.1} s; millgate jobs succeeded {succeeded} of {n}; peak RSS {} MiB",
        hwm_kb.map(|k| k / 1024).unwrap_or(0)
    ));
    r.figures = json!({
        "messages": n, "payload_bytes": PAYLOAD.len(), "preload_secs": round(preload_secs, 2),
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
