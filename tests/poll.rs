//! Poll triggers end to end: a real poll program (sh) called every second by the real service
//! with its saved state, items becoming jobs, state in sled.

mod common;

use std::time::{Duration, Instant};

use common::binary::MillgateProcess;
use common::{eventually, lines, TestService};
use serde_json::{json, Value};

const SECS_15: Duration = Duration::from_secs(15);

async fn saved_state(t: &TestService, name: &str) -> Value {
    let (code, v) = t.admin_get(&format!("/api/triggers/{name}/state")).await;
    assert_eq!(code, 200, "{v}");
    v["state"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_advances_across_three_polls_and_items_become_jobs() {
    // The poll program logs the input it got and returns one item numbered after the state.
    // (No `${...}` in it: the config loader expands that as an environment variable.)
    let t = TestService::start(
        r#"
[runnables.counter]
command = ["sh", "-c", 'in=$(cat); echo "$in" >> {DIR}/inputs.log; n=$(echo "$in" | sed -n "s/.*\"n\":\([0-9]*\).*/\1/p"); [ -n "$n" ] || n=0; m=$((n + 1)); echo "{\"items\": [{\"id\": $m}], \"state\": {\"n\": $m}}"']

[runnables.echo]
kind = "echo"

[[triggers]]
name = "feed"
kind = "poll"
runnable = "echo"
poll_runnable = "counter"
cron = "* * * * * *"
timezone = "Europe/Berlin"
dedup_key = ".id"
"#,
    )
    .await;
    let deadline = Instant::now() + SECS_15;
    while t.jobs_of("feed").len() < 3 {
        assert!(
            Instant::now() < deadline,
            "three jobs: status {}, inputs {:?}, jobs {:?}",
            common::schedule_status(&t, "feed").await,
            lines(&t.path("inputs.log")),
            t.jobs_of("feed")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let inputs: Vec<Value> = lines(&t.path("inputs.log"))
        .iter()
        .map(|l| serde_json::from_str(l).expect("json input"))
        .collect();
    assert!(inputs.len() >= 3, "{inputs:?}");
    assert_eq!(inputs[0], json!({"state": null}));
    assert_eq!(inputs[1], json!({"state": {"n": 1}}));
    assert_eq!(inputs[2], json!({"state": {"n": 2}}));
    let mut ids: Vec<i64> = t
        .jobs_of("feed")
        .iter()
        .map(|r| {
            assert_eq!(r.event["kind"], "poll");
            assert_eq!(r.event["timezone"], "Europe/Berlin");
            assert_eq!(r.args, r.event["item"], "the item is the job's args");
            assert_eq!(r.event_id, format!("poll:feed:{}", r.args["id"]));
            r.args["id"].as_i64().expect("id")
        })
        .collect();
    ids.sort();
    assert_eq!(&ids[..3], &[1, 2, 3]);
    let state = saved_state(&t, "feed").await;
    assert!(state["n"].as_i64().unwrap_or(0) >= 3, "{state}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_malformed_and_failing_polls_create_nothing_and_keep_state() {
    let t = TestService::start(
        r#"
[runnables.empty]
command = ["sh", "-c", 'cat > /dev/null; echo "{\"items\": [], \"state\": {\"cursor\": 7}}"']

[runnables.malformed]
command = ["sh", "-c", 'cat > /dev/null; echo "{\"items\": {\"not\": \"a list\"}}"']

[runnables.failing]
command = ["sh", "-c", 'cat > /dev/null; echo boom >&2; exit 2']

[runnables.echo]
kind = "echo"

[[triggers]]
name = "empty"
kind = "poll"
runnable = "echo"
poll_runnable = "empty"
cron = "* * * * * *"

[[triggers]]
name = "malformed"
kind = "poll"
runnable = "echo"
poll_runnable = "malformed"
cron = "* * * * * *"

[[triggers]]
name = "failing"
kind = "poll"
runnable = "echo"
poll_runnable = "failing"
cron = "* * * * * *"
retry = { attempts = 2, initial = "100ms", max = "100ms" }
"#,
    )
    .await;
    // Seed states so that "unchanged" is visible.
    for name in ["malformed", "failing"] {
        let resp = t
            .admin_req(reqwest::Method::PUT, &format!("/api/triggers/{name}/state"))
            .json(&json!({"cursor": 1}))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status().as_u16(), 200);
    }
    common::wait_schedule_counter(&t, "empty", "skipped_polls", 2).await;
    assert!(
        t.jobs_of("empty").is_empty(),
        "an empty poll creates no job"
    );
    assert_eq!(saved_state(&t, "empty").await, json!({"cursor": 7}));

    let s = common::wait_schedule_counter(&t, "malformed", "malformed_polls", 2).await;
    assert!(
        s["last_poll_error"]
            .as_str()
            .unwrap_or("")
            .contains("`items` must be an array"),
        "{s}"
    );
    assert!(t.jobs_of("malformed").is_empty());
    assert_eq!(saved_state(&t, "malformed").await, json!({"cursor": 1}));

    // Each failure is retried with the trigger's backoff (attempts = 2 → one retry per tick).
    let s = common::wait_schedule_counter(&t, "failing", "poll_failures", 4).await;
    assert!(
        s["last_poll_error"].as_str().unwrap_or("").contains("boom"),
        "{s}"
    );
    assert!(t.jobs_of("failing").is_empty());
    assert_eq!(saved_state(&t, "failing").await, json!({"cursor": 1}));
    t.stop().await;
}

/// A crash after the items' jobs were accepted but before the new state was written leaves
/// the old state on disk. We create exactly that on-disk situation — the jobs durably queued,
/// the saved state still the old one — by putting the old state back through the admin API
/// while the trigger is disabled, then restarting the service. The next poll repeats the
/// items: `dedup_key` drops them, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_repeated_after_a_crash_before_the_state_write_are_deduplicated() {
    let body = r#"
[runnables.source]
command = ["sh", "-c", '''in=$(cat); case "$in" in *s1*) items='[]';; *) if [ -f {DIR}/more ]; then items='[{"id":"a"},{"id":"b"},{"id":"c"}]'; else items='[{"id":"a"},{"id":"b"}]'; fi;; esac; echo "{\"items\": $items, \"state\": \"s1\"}"''']

[runnables.echo]
kind = "echo"

[[triggers]]
name = "inbox"
kind = "poll"
runnable = "echo"
poll_runnable = "source"
cron = "* * * * * *"
dedup_key = ".id"
"#;
    let t = TestService::start(body).await;
    eventually(SECS_15, "jobs for a and b, state saved", || {
        t.jobs_of("inbox").len() >= 2
    })
    .await;
    eventually(SECS_15, "the state written after the items", || {
        t.app.service.store.source_state("inbox").ok().flatten() == Some(json!("s1"))
    })
    .await;
    let resp = t
        .admin_req(reqwest::Method::POST, "/api/triggers/inbox/disable")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    // Back to the state before the first poll: as if its state write never happened.
    let resp = t
        .admin_req(reqwest::Method::PUT, "/api/triggers/inbox/state")
        .json(&Value::Null)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let before: Vec<String> = t
        .jobs_of("inbox")
        .iter()
        .map(|r| r.args["id"].as_str().unwrap_or("").to_string())
        .collect();
    let dir = t.stop().await;
    // From now on the source has one more item.
    std::fs::write(dir.path().join("more"), "").expect("write marker");

    let text = format!("{}\n{body}", common::header(dir.path()));
    let t = TestService::start_in(dir, &text).await;
    let resp = t
        .admin_req(reqwest::Method::POST, "/api/triggers/inbox/enable")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    eventually(SECS_15, "the job for c", || {
        t.jobs_of("inbox").iter().any(|r| r.args["id"] == "c")
    })
    .await;
    let mut ids: Vec<String> = t
        .jobs_of("inbox")
        .iter()
        .map(|r| r.args["id"].as_str().unwrap_or("").to_string())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        ["a", "b", "c"],
        "each item once; before restart: {before:?}"
    );
    let (_, v) = t.admin_get("/api/triggers/inbox").await;
    assert!(
        v["counters"]["events_duplicate"].as_u64().unwrap_or(0) >= 2,
        "the repeated items were dropped as duplicates: {v}"
    );
    t.stop().await;
}

/// A real crash at the worst moment, through the binary: the items' jobs are durably queued,
/// then the process aborts (crash point, as `kill -9`) before the new state is written. After a
/// restart the next poll starts from the old state and returns the same items: `dedup_key`
/// drops them, the queued jobs run, and every item has exactly one job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_item_jobs_and_state_write_through_the_binary() {
    use std::time::Instant;

    let mut mg = MillgateProcess::new(
        r#"
[runnables.source]
command = ["sh", "-c", 'echo "{\"items\": [{\"id\": \"a\"}, {\"id\": \"b\"}], \"state\": \"s1\"}"']

[runnables.record]
command = ["sh", "-c", 'in=$(cat); echo "$MILLGATE_JOB_ID $in" >> {DIR}/ran.log']

[[triggers]]
name = "inbox"
kind = "poll"
runnable = "record"
poll_runnable = "source"
cron = "* * * * * *"
dedup_key = ".id"
"#,
    );
    mg.env("MILLGATE_CRASH_AT", "poll_before_state_save");
    mg.spawn();
    let status = mg
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the crash point was never reached");
    assert!(
        !status.success(),
        "millgate should have aborted at the crash point"
    );

    mg.env_remove("MILLGATE_CRASH_AT");
    mg.spawn();
    let ran = mg.path("ran.log");
    // Each line: "<job id> <args>". A job that was running at the crash may run again (that is
    // at-least-once); what must not happen is a second job for the same item.
    let runs = || -> Vec<(String, String)> {
        common::lines(&ran)
            .iter()
            .filter_map(|l| {
                let (job, args) = l.split_once(' ')?;
                let v: Value = serde_json::from_str(args).ok()?;
                Some((v["id"].as_str()?.to_string(), job.to_string()))
            })
            .collect()
    };
    let items = |runs: &[(String, String)]| -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
        let mut m = std::collections::BTreeMap::new();
        for (item, job) in runs {
            m.entry(item.clone()).or_insert_with(std::collections::BTreeSet::new).insert(job.clone());
        }
        m
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while items(&runs()).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "items lost after the crash: ran {:?}",
            runs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Several polls after the restart, all repeating a and b: still no new job.
    tokio::time::sleep(Duration::from_secs(3)).await;
    mg.kill_9();
    let by_item = items(&runs());
    assert_eq!(by_item.keys().collect::<Vec<_>>(), ["a", "b"]);
    for (item, jobs) in &by_item {
        assert_eq!(jobs.len(), 1, "item {item} got more than one job: {jobs:?}");
    }
}

/// An operator sets the state while a poll runs: the poll's own save must not overwrite it,
/// so the next poll starts from the operator's value. The poll program holds each poll open
/// until the test lets it finish, so the write lands inside the poll every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_set_while_a_poll_runs_wins_over_that_polls_save() {
    let mut mg = MillgateProcess::new(
        r#"
[runnables.cursor]
command = ["sh", "-c", 'in=$(cat); echo "$in" >> {DIR}/inputs.log; while [ ! -f {DIR}/go ]; do sleep 0.05; done; n=$(echo "$in" | sed -n "s/.*\"cursor\":\([0-9]*\).*/\1/p"); [ -n "$n" ] || n=0; echo "{\"items\": [], \"state\": {\"cursor\": $((n + 1))}}"']

[[triggers]]
name = "feed"
kind = "poll"
runnable = "cursor"
poll_runnable = "cursor"
cron = "* * * * * *"
"#,
    );
    mg.start().await;
    let inputs = mg.path("inputs.log");
    eventually(SECS_15, "a first poll", || !lines(&inputs).is_empty()).await;
    // The first poll has read `null` and waits: set the state now, then let it finish.
    let set: Value =
        serde_json::from_str(&mg.cli(&["state", "set", "feed", r#"{"cursor": 2000}"#]))
            .expect("json");
    assert_eq!(set, json!({"cursor": 2000}));
    std::fs::write(mg.path("go"), "").expect("go");
    eventually(SECS_15, "a second poll", || lines(&inputs).len() >= 2).await;
    let got: Vec<Value> = lines(&inputs)
        .iter()
        .map(|l| serde_json::from_str(l).expect("json input"))
        .collect();
    mg.kill_9();
    assert_eq!(got[0], json!({"state": null}));
    assert_eq!(
        got[1],
        json!({"state": {"cursor": 2000}}),
        "the poll that ran during the write saved over it: {got:?}"
    );
}
