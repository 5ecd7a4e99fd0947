//! Crash safety through the real binary: accepted webhooks survive `kill -9`.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::binary::MillgateProcess;
use common::lines;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_accepted_job() {
    let mut mg = MillgateProcess::new(
        r#"
[router]
runners = 2

[runnables.slow]
command = ["sh", "-c", 'sleep 0.1; echo "$PPID $MILLGATE_JOB_ID" >> {DIR}/done.log']

[[triggers]]
name = "crashy"
kind = "webhook"
runnable = "slow"
token = "tk"
"#,
    );
    let done = mg.path("done.log");
    let base = mg.ingress.clone();
    let client = reqwest::Client::new();
    mg.start().await;

    const N: usize = 60;
    let mut accepted = Vec::new();
    let mut keyed: HashMap<String, String> = HashMap::new();
    for i in 0..N {
        let resp = client
            .post(format!("{base}/hooks/crashy"))
            .bearer_auth("tk")
            .header("idempotency-key", format!("req-{i}"))
            .json(&json!({"i": i}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let body: Value = resp.json().await.unwrap();
        let id = body["job_id"].as_str().unwrap().to_string();
        keyed.insert(format!("req-{i}"), id.clone());
        accepted.push(id);
    }
    // 60 jobs at 2 × 0.1 s take 3 s: most are still queued now.
    mg.kill_9();
    let finished_before = lines(&done).len();
    assert!(
        finished_before < N,
        "the crash came too late to test anything"
    );

    mg.start().await;

    // Every accepted job finishes: its record says succeeded and it ran.
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &accepted {
        loop {
            let resp = client
                .get(format!("{base}/jobs/{id}"))
                .bearer_auth("tk")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "job {id} lost");
            let view: Value = resp.json().await.unwrap();
            if view["status"] == "succeeded" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} stuck in {}",
                view["status"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Each line is "<millgate pid> <job id>". At-least-once allows a job to run again in the
    // new process when the crash came before its outcome was on disk; it never allows a job
    // to run twice in one process, or not at all.
    let ran = lines(&done);
    let mut runs: HashMap<&str, Vec<&str>> = HashMap::new();
    for line in &ran {
        if let Some((pid, id)) = line.split_once(' ') {
            runs.entry(id).or_default().push(pid);
        }
    }
    for id in &accepted {
        let pids = runs
            .get(id.as_str())
            .unwrap_or_else(|| panic!("job {id} never ran"));
        let mut distinct = pids.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            pids.len(),
            "job {id} ran twice in one process: {pids:?}"
        );
    }
    let twice: Vec<_> = runs.iter().filter(|(_, p)| p.len() > 1).collect();
    assert_eq!(runs.len(), N, "a job ran that nobody sent");

    // Clients retrying after the crash get the same jobs back from the dedup tree.
    for (key, id) in keyed.iter().take(10) {
        let resp = client
            .post(format!("{base}/hooks/crashy"))
            .bearer_auth("tk")
            .header("idempotency-key", key)
            .json(&json!({"retry": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["duplicate"], true);
        assert_eq!(body["job_id"].as_str().unwrap(), id);
    }
    mg.kill_9();
    eprintln!(
        "finished before the kill: {finished_before}/{N}; ran twice: {}",
        twice.len()
    );
}
