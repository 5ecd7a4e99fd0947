//! Schedule triggers end to end: the real service with every-second cron expressions, sled on
//! disk, real processes. The DST rules are unit-tested on the fire-time computation
//! (`millgate-actors` `triggers::cron`); here time is real.

mod common;

use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use common::binary::{cli, MillgateProcess};
use common::{eventually, TestService};
use millgate_actors::job::{JobRecord, JobStatus};
use serde_json::{json, Value};

const SECS_15: Duration = Duration::from_secs(15);

fn scheduled_for(r: &JobRecord) -> DateTime<FixedOffset> {
    let s = r.event["scheduled_for"]
        .as_str()
        .unwrap_or_else(|| panic!("no scheduled_for in {}", r.event));
    DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn fired_at(r: &JobRecord) -> DateTime<FixedOffset> {
    let s = r.event["fired_at"].as_str().expect("fired_at");
    DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fires_every_second_on_time_in_a_non_utc_zone() {
    let t = TestService::start(
        r#"
[runnables.echo]
kind = "echo"

[[triggers]]
name = "tick"
kind = "schedule"
runnable = "echo"
cron = "* * * * * *"
timezone = "Asia/Kolkata"
args = { report = "daily", n = 1 }
"#,
    )
    .await;
    eventually(SECS_15, "three scheduled jobs", || {
        t.jobs_of("tick").len() >= 3
    })
    .await;
    let mut jobs = t.jobs_of("tick");
    jobs.sort_by_key(scheduled_for);
    let mut previous: Option<DateTime<FixedOffset>> = None;
    for r in &jobs {
        let at = scheduled_for(r);
        // +05:30: the fire time is given on the zone's wall clock.
        assert_eq!(
            at.offset().local_minus_utc(),
            5 * 3600 + 1800,
            "{}",
            r.event
        );
        assert_eq!(at.timestamp_subsec_millis(), 0, "on a whole second");
        let late = fired_at(r) - at;
        assert!(
            late >= chrono::Duration::zero() && late < chrono::Duration::milliseconds(900),
            "fired {late} after its time: {}",
            r.event
        );
        assert_eq!(r.event["kind"], "schedule");
        assert_eq!(r.event["timezone"], "Asia/Kolkata");
        assert_eq!(r.event["catch_up"], false);
        assert_eq!(
            r.args,
            json!({"report": "daily", "n": 1}),
            "args are the job's args"
        );
        assert_eq!(
            r.event_id,
            format!(
                "schedule:tick:{}",
                at.with_timezone(&Utc)
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        );
        if let Some(p) = previous {
            assert_eq!(at - p, chrono::Duration::seconds(1), "one job per second");
        }
        previous = Some(at);
    }
    let s = common::schedule_status(&t, "tick").await;
    let next = s["next_fires"].as_array().expect("next_fires");
    assert_eq!(next.len(), 5, "{s}");
    for n in next {
        let n = DateTime::parse_from_rfc3339(n.as_str().expect("string")).expect("rfc3339");
        assert!(
            n.with_timezone(&Utc) > Utc::now() - chrono::Duration::seconds(2),
            "{s}"
        );
    }
    // The saved state is the last fire time.
    let (code, v) = t.admin_get("/api/triggers/tick/state").await;
    assert_eq!(code, 200, "{v}");
    assert!(v["state"]["last_fire"].is_string(), "{v}");
    t.stop().await;
}

fn overlaps(jobs: &[JobRecord]) -> bool {
    let mut spans: Vec<(DateTime<Utc>, DateTime<Utc>)> = jobs
        .iter()
        .filter_map(|r| Some((r.started_at?, r.finished_at.unwrap_or_else(Utc::now))))
        .collect();
    spans.sort();
    spans.windows(2).any(|w| w[1].0 < w[0].1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_skip_buffer_one_and_allow_all() {
    let t = TestService::start(
        r#"
[router]
runners = 8

[runnables.slow]
command = ["sh", "-c", "sleep 2.2; echo '{}'"]

[[triggers]]
name = "skip"
kind = "schedule"
runnable = "slow"
cron = "* * * * * *"

[[triggers]]
name = "buffer"
kind = "schedule"
runnable = "slow"
cron = "* * * * * *"
overlap = "buffer_one"

[[triggers]]
name = "all"
kind = "schedule"
runnable = "slow"
cron = "* * * * * *"
overlap = "allow_all"
"#,
    )
    .await;
    // allow_all: a job per second although each takes 2.2 s, so they run side by side.
    eventually(SECS_15, "allow_all jobs overlapping", || {
        let jobs = t.jobs_of("all");
        jobs.iter()
            .filter(|r| r.status == JobStatus::Running)
            .count()
            >= 2
    })
    .await;
    // skip: fire times during a run are skipped and counted; runs never overlap.
    let s = common::wait_schedule_counter(&t, "skip", "skipped", 3).await;
    eventually(SECS_15, "two finished skip jobs", || {
        t.jobs_of("skip")
            .iter()
            .filter(|r| r.status == JobStatus::Succeeded)
            .count()
            >= 2
    })
    .await;
    let skip_jobs = t.jobs_of("skip");
    assert!(!overlaps(&skip_jobs), "skip runs overlapped: {s}");
    // buffer_one: one fire time waits for the running job and runs right after it (late);
    // the rest are skipped.
    common::wait_schedule_counter(&t, "buffer", "skipped", 1).await;
    eventually(SECS_15, "a buffered fire time ran late", || {
        t.jobs_of("buffer").iter().any(|r| {
            r.status == JobStatus::Succeeded || r.status == JobStatus::Running
        } && fired_at(r) - scheduled_for(r) >= chrono::Duration::milliseconds(800))
    })
    .await;
    let buffer_jobs = t.jobs_of("buffer");
    assert!(!overlaps(&buffer_jobs), "buffer_one runs overlapped");
    // Every fire time ran at most once, whatever the policy.
    for name in ["skip", "buffer", "all"] {
        let jobs = t.jobs_of(name);
        let mut times: Vec<_> = jobs.iter().map(scheduled_for).collect();
        times.sort();
        let n = times.len();
        times.dedup();
        assert_eq!(times.len(), n, "{name}: a fire time ran twice");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_runs_missed_fire_times_within_the_window_once() {
    let body = r#"
[runnables.echo]
kind = "echo"

[[triggers]]
name = "tick"
kind = "schedule"
runnable = "echo"
cron = "* * * * * *"
catch_up_window = "3s"
"#;
    let t = TestService::start(body).await;
    eventually(SECS_15, "a first job", || !t.jobs_of("tick").is_empty()).await;
    let dir = t.stop().await;
    // Downtime longer than the window: 6 s, so about 3 fire times are owed and 3 are missed.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let text = format!("{}\n{body}", common::header(dir.path()));
    let t = TestService::start_in(dir, &text).await;
    eventually(
        SECS_15,
        "catch-up jobs and a regular one after them",
        || {
            let jobs = t.jobs_of("tick");
            jobs.iter().any(|r| r.event["catch_up"] == true)
                && jobs.iter().filter(|r| r.event["catch_up"] == false).count() >= 2
        },
    )
    .await;
    let mut jobs = t.jobs_of("tick");
    jobs.sort_by_key(scheduled_for);
    let mut times: Vec<_> = jobs.iter().map(scheduled_for).collect();
    let n = times.len();
    times.dedup();
    assert_eq!(times.len(), n, "a fire time ran twice");
    let catch_up: Vec<_> = jobs
        .iter()
        .filter(|r| r.event["catch_up"] == true)
        .map(scheduled_for)
        .collect();
    // The window is 3 s: 3 or 4 whole seconds, consecutive, oldest first.
    assert!(
        (3..=4).contains(&catch_up.len()),
        "catch-up fire times: {catch_up:?}"
    );
    for w in catch_up.windows(2) {
        assert_eq!(w[1] - w[0], chrono::Duration::seconds(1));
    }
    // Fire times before the first catch-up one and after the last job before the stop were
    // missed: none ran, and each is counted.
    let first_catch_up = catch_up[0];
    let last_before = jobs
        .iter()
        .map(scheduled_for)
        .filter(|t| *t < first_catch_up)
        .max()
        .expect("a job before the stop");
    let gap = (first_catch_up - last_before).num_seconds() - 1;
    assert!(
        gap >= 1,
        "some fire times were outside the window: {jobs:?}"
    );
    let s = common::schedule_status(&t, "tick").await;
    let missed = s["missed"].as_i64().unwrap_or(-1);
    // `gap + 1` when the stop fell between queueing a fire time's job and saving that fire
    // time: the restart owes it again, finds it outside the window and counts it as missed,
    // though its job exists (a rerun inside the window would have been dropped by dedup).
    assert!(
        missed == gap || missed == gap + 1,
        "missed {missed}, gap {gap}: {s}"
    );
    // After the catch-up, regular fire times go on, each once.
    let last_catch_up = *catch_up.last().expect("catch-up");
    let regular_after: Vec<_> = jobs
        .iter()
        .filter(|r| r.event["catch_up"] == false && scheduled_for(r) > last_catch_up)
        .collect();
    assert!(!regular_after.is_empty());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_on_failure_stops_firing_until_the_state_says_resume() {
    let t = TestService::start(
        r#"
[runnables.fail]
command = ["sh", "-c", "exit 3"]

[[triggers]]
name = "flaky"
kind = "schedule"
runnable = "fail"
cron = "* * * * * *"
pause_on_failure = true
retry = { attempts = 1 }
"#,
    )
    .await;
    let s = common::wait_schedule_counter(&t, "flaky", "skipped_paused", 2).await;
    assert_eq!(s["paused"], true, "{s}");
    let jobs = t.jobs_of("flaky");
    assert_eq!(jobs.len(), 1, "one failed run, then paused: {jobs:?}");
    assert_eq!(jobs[0].status, JobStatus::DeadLettered);

    // Resume through the CLI, as an operator would.
    let (admin, token) = (t.admin.as_str(), common::ADMIN_TOKEN);
    let got: Value =
        serde_json::from_str(&cli(admin, token, &["state", "get", "flaky"])).expect("json");
    assert_eq!(got["paused"], true, "{got}");
    assert!(got["last_fire"].is_string(), "{got}");
    cli(
        admin,
        token,
        &["state", "set", "flaky", r#"{"paused": false}"#],
    );
    eventually(SECS_15, "a run after resuming", || {
        t.jobs_of("flaky").len() >= 2
    })
    .await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_api_refuses_other_kinds_and_bad_schedule_state() {
    let t = TestService::start(
        r#"
[runnables.echo]
kind = "echo"

[[triggers]]
name = "hook"
kind = "webhook"
runnable = "echo"

[[triggers]]
name = "later"
kind = "schedule"
runnable = "echo"
cron = "0 0 0 1 1 * 2099"
"#,
    )
    .await;
    let (code, v) = t.admin_get("/api/triggers/hook/state").await;
    assert_eq!(code, 409, "{v}");
    let (code, v) = t.admin_get("/api/triggers/nope/state").await;
    assert_eq!(code, 404, "{v}");
    // The anchor is written when the actor starts: wait for it.
    let deadline = std::time::Instant::now() + SECS_15;
    let (code, v) = loop {
        let (code, v) = t.admin_get("/api/triggers/later/state").await;
        if !v["state"].is_null() || std::time::Instant::now() > deadline {
            break (code, v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, 200, "{v}");
    // Before the first fire time, the state holds the anchor written at the first start
    // (fire times after it are owed after a crash), not a fire time.
    assert_eq!(v["state"]["paused"], false, "{v}");
    let anchor = v["state"]["last_fire"].as_str().expect("anchor");
    let anchor = DateTime::parse_from_rfc3339(anchor).expect("rfc3339");
    assert!(
        (Utc::now() - anchor.with_timezone(&Utc)).num_seconds() < 60,
        "{v}"
    );
    let resp = t
        .admin_req(reqwest::Method::PUT, "/api/triggers/later/state")
        .json(&json!({"last_fire": "yesterday"}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 422);
    let body: Value = resp.json().await.unwrap_or_default();
    assert!(body.to_string().contains("last_fire"), "{body}");
    // The status is filled in once the actor has armed its timer.
    let deadline = std::time::Instant::now() + SECS_15;
    let s = loop {
        let s = common::schedule_status(&t, "later").await;
        if !s["next_fires"].is_null() || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(s["next_fires"][0], "2099-01-01T00:00:00+00:00", "{s}");
    t.stop().await;
}

/// `millgate check` on a file with a bad cron expression, an unknown time zone and an
/// unknown poll runnable: each error names its key and line.
#[test]
fn bad_cron_timezone_and_poll_runnable_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    let text = r#"[runnables.echo]
kind = "echo"

[[triggers]]
name = "a"
kind = "schedule"
runnable = "echo"
cron = "61 * * * * *"

[[triggers]]
name = "b"
kind = "poll"
runnable = "echo"
poll_runnable = "echo"
cron = "* * * * * *"
timezone = "Mars/Olympus_Mons"

[[triggers]]
name = "c"
kind = "poll"
runnable = "echo"
poll_runnable = "no_such_poller"
cron = "@hourly"
"#;
    std::fs::write(&path, text).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_millgate"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run millgate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let cron_line = stderr
        .lines()
        .find(|l| l.contains("61 * * * * *"))
        .unwrap_or_else(|| panic!("no cron error:\n{stderr}"));
    assert!(cron_line.contains("cron"), "{cron_line}");
    assert!(
        cron_line.contains(":8:"),
        "names the line of `cron`: {cron_line}"
    );
    let tz_line = stderr
        .lines()
        .find(|l| l.contains("Mars/Olympus_Mons"))
        .unwrap_or_else(|| panic!("no timezone error:\n{stderr}"));
    assert!(tz_line.contains("timezone"), "{tz_line}");
    assert!(
        tz_line.contains(":16:"),
        "names the line of `timezone`: {tz_line}"
    );
    let poll_line = stderr
        .lines()
        .find(|l| l.contains("no_such_poller"))
        .unwrap_or_else(|| panic!("no poll_runnable error:\n{stderr}"));
    assert!(poll_line.contains("poll_runnable"), "{poll_line}");
    assert!(
        poll_line.contains(":22:"),
        "names the line of `poll_runnable`: {poll_line}"
    );
}

/// The resume command of docs/cli.md, `state set T '{"paused": false}'`, sets `paused` and
/// keeps `last_fire`: after a `kill -9` the restart still knows which fire times it owes and
/// runs the ones missed while it was down (within `catch_up_window`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_keeps_last_fire_so_a_restart_after_kill_9_runs_the_missed_fire_times() {
    let mut mg = MillgateProcess::new(
        r#"
[runnables.log]
command = ["sh", "-c", 'read -r line; echo "$line" >> {DIR}/ticks.log']

[[triggers]]
name = "every4"
kind = "schedule"
runnable = "log"
cron = "*/4 * * * * *"
catch_up_window = "1h"
preprocessor = { jq = '{at: .scheduled_for, catch_up: .catch_up}' }
"#,
    );
    let ticks_log = mg.path("ticks.log");
    let ticks = || -> Vec<(DateTime<Utc>, bool)> {
        common::lines(&ticks_log)
            .iter()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("json line");
                let at = DateTime::parse_from_rfc3339(v["at"].as_str().expect("at"))
                    .expect("rfc3339")
                    .with_timezone(&Utc);
                (at, v["catch_up"] == true)
            })
            .collect()
    };
    mg.start().await;
    eventually(SECS_15, "a first fire time", || !ticks().is_empty()).await;
    let first = ticks()[0].0;
    // Once the fire time is saved, resume as docs/cli.md shows, then crash before the next.
    let first_text = first.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let deadline = std::time::Instant::now() + SECS_15;
    while serde_json::from_str::<Value>(&mg.cli(&["state", "get", "every4"])).expect("json")
        ["last_fire"]
        != first_text
    {
        assert!(
            std::time::Instant::now() < deadline,
            "fire time never saved"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let set: Value =
        serde_json::from_str(&mg.cli(&["state", "set", "every4", r#"{"paused": false}"#]))
            .expect("json");
    mg.kill_9();
    // Down across two fire times, then back.
    let owed = [
        first + chrono::Duration::seconds(4),
        first + chrono::Duration::seconds(8),
    ];
    let back = (owed[1] + chrono::Duration::seconds(1) - Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(back).await;
    mg.spawn();
    eventually(SECS_15, "the missed fire times run", || {
        let got = ticks();
        owed.iter().all(|t| got.iter().any(|(at, _)| at == t))
    })
    .await;
    let got = ticks();
    mg.kill_9();
    for t in owed {
        let runs: Vec<_> = got.iter().filter(|(at, _)| *at == t).collect();
        assert_eq!(runs.len(), 1, "{t} ran {runs:?}: {got:?}");
        assert!(runs[0].1, "{t} should be a catch-up run: {got:?}");
    }
    assert_eq!(set, json!({"last_fire": first_text, "paused": false}));
}

/// Day-of-week numbers mean what they mean in cron, in 5- and 6-field lines alike: 0 and 7
/// are Sunday, 1-5 Monday to Friday, and names work. Read back from the running binary's
/// next five fire times (admin API), each checked against the calendar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day_of_week_numbers_and_names_follow_cron() {
    use chrono::{Datelike, Weekday};
    let cases: [(&str, &str, &[Weekday]); 8] = [
        (
            "weekdays",
            "0 9 * * 1-5",
            &[
                Weekday::Mon,
                Weekday::Tue,
                Weekday::Wed,
                Weekday::Thu,
                Weekday::Fri,
            ],
        ),
        (
            "weekdays6",
            "0 0 9 * * 1-5",
            &[
                Weekday::Mon,
                Weekday::Tue,
                Weekday::Wed,
                Weekday::Thu,
                Weekday::Fri,
            ],
        ),
        (
            "named",
            "0 9 * * MON-FRI",
            &[
                Weekday::Mon,
                Weekday::Tue,
                Weekday::Wed,
                Weekday::Thu,
                Weekday::Fri,
            ],
        ),
        ("sunday0", "0 9 * * 0", &[Weekday::Sun]),
        ("sunday7", "0 0 9 * * 7", &[Weekday::Sun]),
        ("sun", "0 9 * * SUN", &[Weekday::Sun]),
        ("saturday", "0 0 9 * * 6", &[Weekday::Sat]),
        (
            "fri_to_sun",
            "0 9 * * 5-7",
            &[Weekday::Fri, Weekday::Sat, Weekday::Sun],
        ),
    ];
    let mut body = String::from("[runnables.echo]\nkind = \"echo\"\n");
    for (name, cron, _) in &cases {
        body.push_str(&format!(
            "\n[[triggers]]\nname = \"{name}\"\nkind = \"schedule\"\nrunnable = \"echo\"\ncron = \"{cron}\"\ntimezone = \"America/New_York\"\n"
        ));
    }
    let mut mg = MillgateProcess::new(&body);
    mg.start().await;
    let (admin, client) = (mg.admin.clone(), reqwest::Client::new());
    for (name, cron, days) in &cases {
        let deadline = std::time::Instant::now() + SECS_15;
        let next = loop {
            let v: Value = client
                .get(format!("{admin}/api/triggers/{name}"))
                .bearer_auth(common::ADMIN_TOKEN)
                .send()
                .await
                .expect("admin request")
                .json()
                .await
                .expect("json");
            if let Some(n) = v["schedule"]["next_fires"]
                .as_array()
                .filter(|n| !n.is_empty())
            {
                break n.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: no next_fires: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(next.len(), 5, "{name}");
        let mut seen = std::collections::BTreeSet::new();
        for t in &next {
            let t = DateTime::parse_from_rfc3339(t.as_str().expect("string")).expect("rfc3339");
            assert_eq!(
                t.format("%H:%M:%S").to_string(),
                "09:00:00",
                "{name} `{cron}`: {t}"
            );
            assert!(
                days.contains(&t.weekday()),
                "{name} `{cron}` fires on a {} ({t}); expected {days:?}",
                t.weekday()
            );
            seen.insert(t.weekday().num_days_from_monday());
        }
        // Five consecutive fire times cover every day named (at most five).
        assert_eq!(seen.len(), days.len().min(5), "{name} `{cron}`: {next:?}");
    }
}

/// An invalid cron field is refused with one line naming the field and what it takes.
#[test]
fn an_invalid_cron_field_is_named_with_its_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (cron, field, range) in [
        ("61 9 * * *", "minute `61`", "0-59"),
        ("0 0 24 * * *", "hour `24`", "0-23"),
        ("0 9 * * 8", "day of week `8`", "0-7"),
        ("0 9 * 13 *", "month `13`", "1-12"),
        ("0 9 * *", "5 fields", "6 with"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            format!(
                "[runnables.echo]\nkind = \"echo\"\n\n[[triggers]]\nname = \"a\"\nkind = \"schedule\"\nrunnable = \"echo\"\ncron = \"{cron}\"\n"
            ),
        )
        .expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_millgate"))
            .arg("check")
            .arg("--config")
            .arg(&path)
            .output()
            .expect("run millgate");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cron}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.contains(cron))
            .unwrap_or_else(|| panic!("{cron}: no error line:\n{stderr}"));
        assert!(line.contains(":8:"), "names the line: {line}");
        assert!(line.contains(field), "{cron}: names `{field}`: {line}");
        assert!(line.contains(range), "{cron}: says `{range}`: {line}");
    }
}
