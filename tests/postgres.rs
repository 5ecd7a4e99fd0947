//! Postgres triggers against a private cluster of the installed Postgres (`initdb` in a temp
//! dir, free port, `wal_level = logical`: tests/common/brokers.rs), one per test: row events
//! with typed values, replica identities, truncate, transaction granularity, the slot held
//! back by an unsettled job, kill -9 mid-stream, a server restart and a refused `wal_level`.

mod common;

use std::time::{Duration, Instant};

use common::binary::MillgateProcess;
use common::brokers::BrokerProcess;
use common::{assert_one_job_per_event, assert_repeats_only_across_the_kill, lines, TestService};
use millgate_actors::job::JobStatus;
use millgate_actors::triggers::postgres::tokio_postgres::{self, Client, NoTls};
use serde_json::{json, Value};

const SECS_30: Duration = Duration::from_secs(30);

fn url(pg: &BrokerProcess) -> String {
    format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port())
}

/// A client of the private cluster, once it takes queries (its port opens before it has
/// finished starting up).
async fn sql(pg: &BrokerProcess) -> Client {
    let deadline = Instant::now() + SECS_30;
    loop {
        match tokio_postgres::connect(&url(pg), NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                return client;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "cannot connect to the private Postgres: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn trigger(name: &str, pg: &BrokerProcess, runnable: &str, extra: &str) -> String {
    format!(
        r#"
[[triggers]]
name = "{name}"
kind = "postgres"
runnable = "{runnable}"
connection = "{}"
status_interval = "1s"
{extra}
"#,
        url(pg)
    )
}

/// Waits until the trigger's replication stream has started (its slot exists from then on:
/// changes committed before it are not the trigger's).
async fn wait_streaming(t: &TestService, name: &str) {
    common::eventually(SECS_30, "the trigger streams", || {
        t.app.service.registry.get(name).is_some_and(|e| {
            e.runtime
                .source_status
                .lock()
                .is_ok_and(|s| s["connected"] == true)
        })
    })
    .await;
}

/// Waits until a reader streams from `slot` (the binary's trigger has connected).
async fn wait_slot_active(c: &Client, slot: &str) {
    let deadline = Instant::now() + SECS_30;
    loop {
        let active = c
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active",
                &[&slot],
            )
            .await
            .expect("pg_replication_slots")
            .is_some();
        if active {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "slot `{slot}` never became active"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The slot's `confirmed_flush_lsn`, and the server's current WAL position.
async fn slot_lsns(c: &Client, slot: &str) -> (u64, u64) {
    let row = c
        .query_one(
            "SELECT (confirmed_flush_lsn - '0/0')::bigint, (pg_current_wal_lsn() - '0/0')::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("slot");
    (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_changes_become_events_with_typed_values() {
    let pg = BrokerProcess::postgres().await;
    let c = sql(&pg).await;
    c.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, n int, price numeric, ratio float8, ok bool, \
         note text, doc jsonb, at timestamptz, day date, uid uuid, raw bytea, tags text[], \
         big text)",
    )
    .await
    .expect("create table");
    let t = TestService::start(&format!(
        "[runnables.echo]\nkind = \"echo\"\n{}",
        trigger("cdc", &pg, "echo", "tables = [\"public.items\"]")
    ))
    .await;
    wait_streaming(&t, "cdc").await;
    c.batch_execute(
        "INSERT INTO items VALUES (9007199254740993, 7, 'NaN', 1.5, true, 'hi', '{\"a\": [1]}', \
         '2026-12-05 10:00:00.123+00', '2026-12-05', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', \
         '\\x00ff', ARRAY['x y', NULL, 'NULL'], \
         (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 1000) g));
         UPDATE items SET n = 8;
         ALTER TABLE items REPLICA IDENTITY FULL;
         UPDATE items SET note = 'bye';
         DELETE FROM items;
         INSERT INTO items (id) VALUES (1);
         TRUNCATE items;",
    )
    .await
    .expect("changes");
    let jobs = t.final_jobs("cdc", 6, SECS_30).await;
    let ops: Vec<&str> = jobs.iter().filter_map(|j| j.event["op"].as_str()).collect();
    assert_eq!(
        ops,
        ["insert", "update", "update", "delete", "insert", "truncate"]
    );
    assert!(jobs.iter().all(|j| j.status == JobStatus::Succeeded));
    let insert = &jobs[0].event;
    assert_eq!(insert["schema"], "public");
    assert_eq!(insert["table"], "items");
    let row = &insert["row"];
    assert_eq!(
        row["id"], "9007199254740993",
        "bigint past 2^53 as a string"
    );
    assert_eq!(row["n"], 7);
    assert_eq!(row["price"], "NaN");
    assert_eq!(row["ratio"], 1.5);
    assert_eq!(row["ok"], true);
    assert_eq!(row["doc"], json!({"a": [1]}));
    assert_eq!(row["at"], "2026-12-05T10:00:00.123+00:00");
    assert_eq!(row["day"], "2026-12-05");
    assert_eq!(row["uid"], "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_eq!(row["raw"], "AP8=");
    assert_eq!(row["tags"], json!(["x y", null, "NULL"]));
    assert!(insert["lsn"].as_str().unwrap_or_default().contains('/'));
    assert!(insert["xid"].as_u64().is_some());
    chrono::DateTime::parse_from_rfc3339(insert["commit_time"].as_str().expect("commit_time"))
        .expect("RFC 3339");
    // Windmill's mapping.
    assert_eq!(jobs[0].args["transaction_type"], "insert");
    assert_eq!(jobs[0].args["table_name"], "items");
    assert_eq!(jobs[0].args["row"]["n"], 7);

    // Default replica identity: the key, no old row; the big text was not sent.
    let upd = &jobs[1].event;
    assert_eq!(upd["row"]["n"], 8);
    assert_eq!(upd["key"], json!({"id": "9007199254740993"}));
    assert_eq!(upd["old_row"], Value::Null);
    assert_eq!(upd["unchanged_toast"], json!(["big"]));
    assert!(upd["row"].get("big").is_none());
    // REPLICA IDENTITY FULL: the old row.
    let full = &jobs[2].event;
    assert_eq!(full["old_row"]["note"], "hi");
    assert_eq!(full["row"]["note"], "bye");
    let del = &jobs[3].event;
    assert_eq!(del["row"], Value::Null);
    assert_eq!(del["old_row"]["note"], "bye");
    assert_eq!(
        jobs[3].args["row"]["note"], "bye",
        "a delete's row is its old row"
    );
    assert_eq!(jobs[5].event["table"], "items");
    // The insert's event id: slot, commit LSN, position.
    assert!(
        jobs[0].event_id.starts_with("postgres:cdc:millgate_cdc:"),
        "{}",
        jobs[0].event_id
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_granularity_makes_one_job_per_transaction() {
    let pg = BrokerProcess::postgres().await;
    let c = sql(&pg).await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .expect("table");
    let t = TestService::start(&format!(
        "[runnables.echo]\nkind = \"echo\"\n{}",
        trigger(
            "tx",
            &pg,
            "echo",
            "tables = [\"public.t\"]\ngranularity = \"transaction\"\noperations = [\"insert\", \"delete\"]"
        )
    ))
    .await;
    wait_streaming(&t, "tx").await;
    c.batch_execute(
        "BEGIN; INSERT INTO t VALUES (1, 'a'), (2, 'b'); UPDATE t SET v = 'c'; DELETE FROM t WHERE id = 1; COMMIT;
         INSERT INTO t VALUES (3, 'd');",
    )
    .await
    .expect("changes");
    let jobs = t.final_jobs("tx", 2, SECS_30).await;
    let rows = jobs[0].event["rows"].as_array().expect("rows");
    let ops: Vec<&str> = rows.iter().filter_map(|r| r["op"].as_str()).collect();
    assert_eq!(ops, ["insert", "insert", "delete"], "updates not taken");
    assert_eq!(jobs[0].event["kind"], "postgres");
    assert!(jobs[0].event["xid"].as_u64().is_some());
    assert_eq!(jobs[1].event["rows"][0]["row"]["id"], 3);
    t.stop().await;
}

/// The slot's confirmed flush LSN passes a transaction only once its job settled: a job held
/// open keeps it back (and the transactions after it), and an idle stream confirms the
/// server's position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_advances_only_past_settled_jobs() {
    let pg = BrokerProcess::postgres().await;
    let c = sql(&pg).await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE other (id int)")
        .await
        .expect("tables");
    let t = TestService::start(&format!(
        r#"
[router]
runners = 4

[runnables.gate]
command = ["sh", "-c", "if grep -q '\"id\": *1[,}}]' ; then while [ ! -e {{DIR}}/open ]; do sleep 0.1; done; fi; echo '{{}}'"]
{}"#,
        trigger("held", &pg, "gate", "tables = [\"public.t\"]")
    ))
    .await;
    wait_streaming(&t, "held").await;
    // Where the server is before row 1: an idle slot may be confirmed up to here, not beyond.
    let (_, mark) = slot_lsns(&c, "millgate_held").await;
    c.batch_execute("INSERT INTO t VALUES (1)")
        .await
        .expect("row 1");
    for i in 2..=5 {
        c.batch_execute(&format!("INSERT INTO t VALUES ({i})"))
            .await
            .expect("row");
    }
    // Rows 2..5 run; row 1's job waits for the file.
    common::eventually(SECS_30, "rows 2..5 done", || {
        t.jobs_of("held")
            .iter()
            .filter(|j| j.status == JobStatus::Succeeded)
            .count()
            == 4
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (held, _) = slot_lsns(&c, "millgate_held").await;
    assert!(
        held <= mark,
        "the slot moved to {held:X}, past an unsettled job committed after {mark:X}"
    );
    std::fs::write(t.path("open"), b"").expect("open the gate");
    t.final_jobs("held", 5, SECS_30).await;
    // Then past all of them, and, idle, past changes to tables it does not publish.
    c.batch_execute("INSERT INTO other VALUES (1)")
        .await
        .expect("other");
    let deadline = Instant::now() + SECS_30;
    loop {
        let (confirmed, current) = slot_lsns(&c, "millgate_held").await;
        if confirmed >= current {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle slot stayed at {confirmed:X}, server at {current:X}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    t.stop().await;
}

/// 5,000 committed rows, millgate killed with -9 mid-stream and started again: every row
/// ran, one job each, repeats only across the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_no_row() {
    const N: usize = 5_000;
    let pg = BrokerProcess::postgres().await;
    let c = sql(&pg).await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .expect("table");
    let mut mg = MillgateProcess::new(&format!(
        r#"
[router]
runners = 4

[runnables.log]
command = ["sh", "-c", 'echo $MILLGATE_EVENT_ID $PPID >> {{DIR}}/done.log']
{}"#,
        trigger(
            "rows",
            &pg,
            "log",
            "tables = [\"public.t\"]\nmax_in_flight = 200"
        )
    ));
    let done = mg.path("done.log");
    mg.start().await;
    let first_pid = mg.pid().to_string();
    wait_slot_active(&c, "millgate_rows").await;
    // One transaction per 100 rows.
    for batch in 0..N / 100 {
        c.batch_execute(&format!(
            "INSERT INTO t SELECT g FROM generate_series({}, {}) g",
            batch * 100 + 1,
            batch * 100 + 100
        ))
        .await
        .expect("insert");
    }
    common::eventually(SECS_30, "some rows ran before the kill", || {
        lines(&done).len() >= 300
    })
    .await;
    mg.kill_9();
    assert!(
        lines(&done).len() < N,
        "the kill came too late to test anything"
    );
    mg.spawn();
    common::eventually(Duration::from_secs(120), "every row ran", || {
        let mut ids: Vec<String> = lines(&done)
            .iter()
            .filter_map(|l| l.split(' ').next().map(str::to_string))
            .collect();
        ids.sort();
        ids.dedup();
        ids.len() >= N
    })
    .await;
    mg.kill_9();
    assert_eq!(assert_one_job_per_event(&mg.data_dir(), "rows"), N);
    let twice = assert_repeats_only_across_the_kill(&done, &first_pid);
    eprintln!("ran twice: {twice}");
}

/// The server killed and started again mid-stream: the trigger backs off, reconnects from the
/// slot and takes the rows committed after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_is_reconnected_from_the_slot() {
    let mut pg = BrokerProcess::postgres().await;
    let c = sql(&pg).await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .expect("table");
    let t = TestService::start(&format!(
        "[runnables.echo]\nkind = \"echo\"\n{}",
        trigger("again", &pg, "echo", "tables = [\"public.t\"]")
    ))
    .await;
    wait_streaming(&t, "again").await;
    c.batch_execute("INSERT INTO t VALUES (1)")
        .await
        .expect("row 1");
    t.final_jobs("again", 1, SECS_30).await;
    drop(c);
    // A shutdown the server completes (SIGTERM): the walsender ends the stream.
    pg.terminate();
    t.wait_backing_off("again", SECS_30, |e| !e.is_empty())
        .await;
    pg.restart().await;
    let c = sql(&pg).await;
    c.batch_execute("INSERT INTO t VALUES (2)")
        .await
        .expect("row 2");
    let jobs = t.final_jobs("again", 2, Duration::from_secs(60)).await;
    assert_eq!(jobs[1].event["row"]["id"], 2);
    assert_ne!(
        t.trigger_state("again"),
        millgate_actors::triggers::TriggerState::Disabled
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_logical_wal_is_refused_with_the_fix() {
    let pg = BrokerProcess::postgres_with("replica").await;
    let t = TestService::start(&format!(
        "[runnables.echo]\nkind = \"echo\"\n{}",
        trigger("nowal", &pg, "echo", "tables = [\"public.t\"]")
    ))
    .await;
    let e = t
        .wait_backing_off("nowal", SECS_30, |e| e.contains("wal_level"))
        .await;
    assert!(e.contains("wal_level = logical"), "{e}");
    t.stop().await;
}
