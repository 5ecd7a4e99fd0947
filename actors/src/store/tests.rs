//! The store's own tests: durability across reopen, sweeping, parking, quarantine, and the
//! round trip of everything the JSON limits accept.

use super::*;
use serde_json::json;

fn store(dir: &tempfile::TempDir) -> Store {
    Store::open(&StoreConfig {
        path: dir.path().join("db"),
        ..Default::default()
    })
    .unwrap()
}

fn record(trigger: &str) -> JobRecord {
    JobRecord::new(trigger, "webhook", "r", "e1", json!({"a": 1}), None)
}

#[tokio::test]
async fn enqueued_jobs_survive_reopen_until_finished() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (record("t"), record("t"));
    {
        let s = store(&dir);
        s.enqueue(&[a.clone(), b.clone()], Some("ev"))
            .await
            .unwrap();
        s.finish(a.job_id, JobStatus::Succeeded, Some(json!(1)), None)
            .unwrap();
        s.commit().await.unwrap();
    }
    let s = store(&dir);
    let left: Vec<_> = s
        .unfinished()
        .unwrap()
        .into_iter()
        .map(|r| r.job_id)
        .collect();
    assert_eq!(left, vec![b.job_id]);
    assert_eq!(s.dedup_get("ev").unwrap(), Some(vec![a.job_id, b.job_id]));
    assert_eq!(s.get_job(a.job_id).unwrap().unwrap().result, Some(json!(1)));
}

#[tokio::test]
async fn dead_letters_are_listed_and_kept_by_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let r = record("t");
    s.enqueue(std::slice::from_ref(&r), None).await.unwrap();
    s.finish(r.job_id, JobStatus::DeadLettered, None, Some("boom".into()))
        .unwrap();
    let dl = s.dead_letters().unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].error, "boom");
    s.sweep().unwrap();
    assert!(s.get_job(r.job_id).unwrap().is_some());
}

#[tokio::test]
async fn sweep_enforces_max_jobs_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&StoreConfig {
        path: dir.path().join("db"),
        max_jobs: 2,
        ..Default::default()
    })
    .unwrap();
    let recs: Vec<_> = (0..5).map(|_| record("t")).collect();
    s.enqueue(&recs, None).await.unwrap();
    for r in &recs {
        s.finish(r.job_id, JobStatus::Succeeded, None, None)
            .unwrap();
    }
    assert_eq!(s.sweep().unwrap().jobs_removed, 3);
    let left: Vec<_> = s
        .jobs(None, 10)
        .unwrap()
        .into_iter()
        .map(|r| r.job_id)
        .collect();
    assert_eq!(left, vec![recs[4].job_id, recs[3].job_id]);
}

#[tokio::test]
async fn parked_jobs_release_once_even_after_a_crash_mid_release() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let mut a = record("t");
    a.status = JobStatus::Parked;
    let mut b = record("t");
    b.status = JobStatus::Parked;
    s.park(&[a.clone(), b.clone()], None).await.unwrap();
    assert_eq!(s.parked_count("t"), 2);
    assert!(
        s.unfinished().unwrap().is_empty(),
        "parked jobs are not dispatched on start"
    );
    // As if an earlier release had queued `a` and died before removing its parked entry.
    s.update_job(a.job_id, |r| r.status = JobStatus::Queued)
        .unwrap();
    let released: Vec<_> = s
        .unpark("t")
        .await
        .unwrap()
        .iter()
        .map(|r| r.job_id)
        .collect();
    assert_eq!(released, vec![b.job_id]);
    assert_eq!(s.parked_count("t"), 0);
    assert!(s.cancel_parked("t").await.unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_writers_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.enqueue(&[record("t")], None).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(s.queue_depth(), 64);
}

#[tokio::test]
async fn an_event_is_stored_once_for_all_its_jobs_and_swept_after_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&StoreConfig {
        path: dir.path().join("db"),
        job_retention: Duration::ZERO,
        ..Default::default()
    })
    .unwrap();
    let event = json!({"kind": "webhook", "body": {"items": [1, 2, 3]}});
    let jobs: Vec<_> = (0..3).map(|_| record("t")).collect();
    s.put_event("e1", &event).unwrap();
    s.enqueue(&jobs, None).await.unwrap();
    let frames = joblog::frames(&dir.path().join("db/joblog")).unwrap();
    let events = frames.iter().filter(|f| f.0 == joblog::frame::KIND_EVENT);
    assert_eq!(events.count(), 1);
    for j in &jobs {
        assert_eq!(s.get_job(j.job_id).unwrap().unwrap().event, event);
        assert!(s
            .job_without_event(j.job_id)
            .unwrap()
            .unwrap()
            .event
            .is_null());
        // What is written to disk has no copy of the event.
        let raw = s.inner.log.read_job(j.job_id).unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("items"));
    }
    for j in &jobs {
        s.finish(j.job_id, JobStatus::Succeeded, None, None)
            .unwrap();
    }
    // Retention zero: the jobs go, and the event with its last job.
    assert_eq!(s.sweep().unwrap().jobs_removed, 3);
    assert!(!s.inner.log.has_event("e1"));
    assert_eq!(s.get_job(jobs[0].job_id).unwrap(), None);
}

#[tokio::test]
async fn finished_jobs_past_max_jobs_free_their_segments_and_stay_gone() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        path: dir.path().join("db"),
        max_jobs: 10,
        ..Default::default()
    };
    let mut parked = record("p");
    parked.status = JobStatus::Parked;
    parked.event_id = "p".into();
    {
        let s = Store::open_with_segments(&config, 8192).unwrap();
        s.put_event("p", &json!({"p": 1})).unwrap();
        s.park(std::slice::from_ref(&parked), None).await.unwrap();
        for i in 0..300 {
            let r = JobRecord::new("t", "webhook", "r", &format!("e{i}"), json!({"i": i}), None);
            s.put_event(&r.event_id, &json!({"body": i})).unwrap();
            s.enqueue(std::slice::from_ref(&r), None).await.unwrap();
            s.finish(r.job_id, JobStatus::Succeeded, Some(json!(i)), None)
                .unwrap();
        }
        s.commit().await.unwrap();
        let before = s.size_on_disk();
        let report = s.sweep().unwrap();
        assert_eq!(report.jobs_removed, 290);
        assert!(report.segments_removed > 5, "{report:?}");
        assert!(
            s.size_on_disk() < before,
            "{} >= {before}",
            s.size_on_disk()
        );
    }
    let s = Store::open_with_segments(&config, 8192).unwrap();
    let (jobs, _) = s.jobs_page(Some("t"), None, 100, None).unwrap();
    assert_eq!(jobs.len(), 10);
    assert_eq!(jobs[0].result, Some(json!(299)));
    assert_eq!(
        s.get_job(jobs[9].job_id).unwrap().unwrap().event,
        json!({"body": 290})
    );
    // The parked job was carried forward out of the dropped segments.
    assert_eq!(s.parked_count("p"), 1);
    assert_eq!(
        s.get_job(parked.job_id).unwrap().unwrap().event,
        json!({"p": 1})
    );
}

#[tokio::test]
async fn os_durability_writes_before_answering() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        path: dir.path().join("db"),
        durability: crate::model::settings::Durability::Os,
        ..Default::default()
    };
    let r = record("t");
    {
        let s = Store::open(&config).unwrap();
        s.enqueue(std::slice::from_ref(&r), Some("ev"))
            .await
            .unwrap();
        // What a kill -9 leaves: the files as written, whatever is still in memory lost.
        let frames = joblog::frames(&dir.path().join("db/joblog")).unwrap();
        assert!(frames.iter().any(|f| f.0 == joblog::frame::KIND_JOB));
    }
    let s = Store::open(&config).unwrap();
    assert_eq!(s.unfinished().unwrap().len(), 1);
}

#[tokio::test]
async fn records_of_an_earlier_version_move_to_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (queued, done) = (record("t"), record("t"));
    {
        // What an earlier version left: records in sled trees, one with its event inline.
        let db = sled::open(dir.path().join("db")).unwrap();
        let jobs = db.open_tree("jobs").unwrap();
        let mut old = serde_json::to_value(&queued).unwrap();
        old["event"] = json!({"kind": "webhook", "body": {"x": 1}});
        jobs.insert(queued.job_id.as_bytes(), serde_json::to_vec(&old).unwrap())
            .unwrap();
        let mut finished = done.clone();
        finished.finish(JobStatus::Succeeded, Some(json!(7)), None);
        jobs.insert(
            done.job_id.as_bytes(),
            serde_json::to_vec(&finished).unwrap(),
        )
        .unwrap();
        jobs.insert(JobId::new().as_bytes(), &b"{not json"[..])
            .unwrap();
        db.open_tree("queue")
            .unwrap()
            .insert(queued.job_id.as_bytes(), &[])
            .unwrap();
        db.flush().unwrap();
    }
    for _ in 0..2 {
        let s = store(&dir);
        let left: Vec<_> = s.unfinished().unwrap().iter().map(|r| r.job_id).collect();
        assert_eq!(left, vec![queued.job_id]);
        assert_eq!(
            s.get_job(queued.job_id).unwrap().unwrap().event["body"]["x"],
            json!(1)
        );
        assert_eq!(
            s.get_job(done.job_id).unwrap().unwrap().result,
            Some(json!(7))
        );
        assert_eq!(s.quarantine_len(), 1);
        assert!(!s
            .inner
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == b"jobs"));
    }
}

#[tokio::test]
async fn undecodable_records_are_quarantined_and_the_rest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let good = record("t");
    let bad_record = record("t");
    let bad = bad_record.job_id;
    {
        let s = store(&dir);
        s.enqueue(std::slice::from_ref(&good), Some("ev"))
            .await
            .unwrap();
        // A record whose args nest past the reader's limit, as an older version could write.
        let deep = serde_json::to_string(&bad_record).unwrap().replace(
            r#""args":{"a":1}"#,
            &format!(r#""args":{}{}"#, "[".repeat(200), "]".repeat(200)),
        );
        assert!(deep.len() > 400);
        s.inner
            .log
            .append_job(joblog::JobFrame {
                job_id: bad,
                status: JobStatus::Queued,
                dedup: false,
                finished_ms: 0,
                trigger: "t",
                event_id: "e1",
                json: deep.as_bytes(),
            })
            .unwrap();
        s.inner.dedup.insert("ev2", &b"not json"[..]).unwrap();
        s.inner.api_triggers.insert("broken", &b"{"[..]).unwrap();
        s.commit_all().await.unwrap();
    }
    let s = store(&dir);
    let left: Vec<_> = s.unfinished().unwrap().iter().map(|r| r.job_id).collect();
    assert_eq!(left, vec![good.job_id]);
    assert!(s.get_job(bad).unwrap().is_none());
    assert_eq!(s.jobs(None, 10).unwrap().len(), 1);
    assert_eq!(s.jobs_page(None, None, 10, None).unwrap().0.len(), 1);
    assert_eq!(s.dedup_get("ev2").unwrap(), None);
    assert!(s.api_triggers().unwrap().is_empty());
    let q = s.quarantined().unwrap();
    let trees: Vec<_> = q.iter().map(|r| r.tree.as_str()).collect();
    assert_eq!(trees, vec!["jobs", "dedup", "api_triggers"]);
    assert_eq!(q[0].key, bad.to_string());
    assert!(q[0].size > 400, "{q:?}");
    assert!(q[0].error.contains("recursion limit"), "{q:?}");
    assert!(s.drop_quarantined(q[0].id).unwrap());
    assert_eq!(s.quarantine_len(), 2);
}

mod round_trip {
    //! Whatever the JSON limits accept must be readable again once stored inside a record.

    use super::*;
    use proptest::prelude::*;

    /// JSON values nested up to `depth` levels, with the awkward scalars (big and small
    /// numbers, escapes, non-ASCII keys).
    fn value(depth: u32) -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(depth, 256, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("\\PC{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A value nested exactly `n` levels deep at its deepest, built around `leaf`.
    fn nest(leaf: Value, n: usize) -> Value {
        (0..n).fold(leaf, |v, i| {
            if i % 2 == 0 {
                Value::Array(vec![v])
            } else {
                json!({ "k": v })
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn accepted_payloads_round_trip(v in value(8), extra in 0usize..80) {
            let limit = crate::model::json::DEFAULT_MAX_DEPTH;
            let v = nest(v, extra);
            let text = serde_json::to_vec(&v).unwrap();
            let Ok(parsed) = crate::model::json::parse_within(&text, limit) else {
                prop_assert!(crate::model::json::depth(&v) > limit);
                return Ok(());
            };
            prop_assert_eq!(&parsed, &v);
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let s = store(&dir);
            let mut r = JobRecord::new("t", "webhook", "r", "e1", parsed.clone(), None);
            r.result = Some(parsed.clone());
            let event = json!({"kind": "webhook", "trigger": "t", "body": parsed});
            s.put_event("e1", &event).unwrap();
            rt.block_on(s.enqueue(std::slice::from_ref(&r), Some("e1"))).unwrap();
            let back = s.get_job(r.job_id).unwrap();
            prop_assert!(back.is_some(), "record quarantined: {:?}", s.quarantined());
            let back = back.unwrap();
            prop_assert_eq!(&back.args, &v);
            prop_assert_eq!(back.result.as_ref(), Some(&v));
            prop_assert_eq!(&back.event, &event);
            prop_assert_eq!(s.quarantine_len(), 0);
        }
    }

    #[test]
    fn the_deepest_accepted_payload_round_trips_and_one_more_level_is_refused() {
        let limit = crate::model::json::DEFAULT_MAX_DEPTH;
        let at_limit = serde_json::to_vec(&nest(json!(1), limit)).unwrap();
        assert!(crate::model::json::parse_within(&at_limit, limit).is_ok());
        let over = serde_json::to_vec(&nest(json!(1), limit + 1)).unwrap();
        assert!(crate::model::json::parse_within(&over, limit).is_err());
        // The largest configurable limit still leaves the records readable.
        let max = crate::model::json::MAX_CONFIGURABLE_DEPTH;
        let v = nest(json!(1), max);
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let mut r = JobRecord::new("t", "webhook", "r", "e1", v.clone(), None);
        r.result = Some(v.clone());
        s.put_event("e1", &json!({"body": v.clone()})).unwrap();
        s.put_job(&r).unwrap();
        let back = s.get_job(r.job_id).unwrap().expect("readable");
        assert_eq!(back.args, v);
        assert_eq!(back.event["body"], v);
    }
}

/// A crash can tear an event's write after its dedup entry (written first) and before its
/// jobs: the young entry without jobs then stands for nothing, and the event is new. Once its
/// jobs are there, it is a duplicate.
#[test]
fn a_dedup_entry_without_its_jobs_is_a_new_event() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let r = record("t");
    s.put_dedup("torn", std::slice::from_ref(&r)).unwrap();
    assert_eq!(s.dedup_get("torn").unwrap(), None);
    s.write_jobs(std::slice::from_ref(&r), Some("torn"))
        .unwrap();
    assert_eq!(s.dedup_get("torn").unwrap(), Some(vec![r.job_id]));
}

/// Sources that redeliver keep no sled dedup entry: the job log's retained jobs answer a
/// redelivery, across a restart too.
#[tokio::test]
async fn an_event_whose_jobs_are_in_the_log_is_a_duplicate_without_a_dedup_entry() {
    let dir = tempfile::tempdir().unwrap();
    let jobs: Vec<_> = (0..3)
        .map(|_| JobRecord::new("t", "kafka", "r", "topic/0/42", json!({}), None))
        .collect();
    let ids: Vec<_> = jobs.iter().map(|r| r.job_id).collect();
    {
        let s = store(&dir);
        assert_eq!(s.dedup_get("topic/0/42").unwrap(), None);
        s.put_event("topic/0/42", &json!({"offset": 42})).unwrap();
        s.enqueue(&jobs, None).await.unwrap();
        assert_eq!(s.dedup_get("topic/0/42").unwrap(), Some(ids.clone()));
        assert!(s.inner.dedup.is_empty());
    }
    let s = store(&dir);
    assert_eq!(s.dedup_get("topic/0/42").unwrap(), Some(ids));
    assert_eq!(s.dedup_get("topic/0/43").unwrap(), None);
}

/// After a crash lost sled's lazily flushed dedup entries, the log restores them for what is
/// left of their window: an idempotency key older than `dedup_ttl` is new again, a young one
/// is still a duplicate.
#[tokio::test]
async fn dedup_entries_come_back_from_the_log_within_their_window_only() {
    let dir = tempfile::tempdir().unwrap();
    let two_days_ago = (Utc::now() - chrono::Duration::days(2)).timestamp() as u64;
    let old_id = JobId(uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        two_days_ago,
        0,
    )));
    let mut old = JobRecord::new("t", "webhook", "r", "old-key", json!({}), None);
    old.job_id = old_id;
    let young = JobRecord::new("t", "webhook", "r", "young-key", json!({}), None);
    {
        let s = store(&dir);
        for r in [&old, &young] {
            s.put_event(&r.event_id, &json!({})).unwrap();
            s.enqueue(std::slice::from_ref(r), Some(&r.event_id))
                .await
                .unwrap();
        }
        // Written now, the entries stand until dedup_ttl from now.
        assert_eq!(s.dedup_get("old-key").unwrap(), Some(vec![old_id]));
        // What a crash before the lazy flush leaves.
        s.inner.dedup.remove("old-key").unwrap();
        s.inner.dedup.remove("young-key").unwrap();
        s.commit_all().await.unwrap();
    }
    let s = store(&dir);
    assert_eq!(s.dedup_get("young-key").unwrap(), Some(vec![young.job_id]));
    assert_eq!(s.dedup_get("old-key").unwrap(), None);
    assert!(s.inner.dedup.contains_key("young-key").unwrap());
    assert!(!s.inner.dedup.contains_key("old-key").unwrap());
}
