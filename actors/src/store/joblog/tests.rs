//! The log on its own: replay after reopen, damage of every kind, segments rolled, dropped and
//! carried forward.

use super::*;

fn job(log: &JobLog, id: JobId, status: JobStatus, event: &str, json: &str) {
    let fin = if status.is_final() { 1 } else { 0 };
    log.append_job(JobFrame {
        job_id: id,
        status,
        dedup: true,
        finished_ms: fin,
        trigger: "t",
        event_id: event,
        json: json.as_bytes(),
    })
    .unwrap();
}

/// One event and a queued job per id, written, in a log that is closed again.
fn write_queued(dir: &Path, ids: &[JobId]) {
    let (log, _) = JobLog::open(dir, SEGMENT_BYTES).unwrap();
    log.append_event("e", b"{}").unwrap();
    for id in ids {
        job(
            &log,
            *id,
            JobStatus::Queued,
            "e",
            r#"{"pad":"xxxxxxxxxxxxxxxxxxxx"}"#,
        );
    }
    log.write_pending(true).unwrap();
}

fn segs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn replay_rebuilds_the_index_and_the_dedup_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (JobId::new(), JobId::new(), JobId::new());
    {
        let (log, _) = JobLog::open(dir.path(), SEGMENT_BYTES).unwrap();
        log.append_event("e1", br#"{"x":1}"#).unwrap();
        job(&log, a, JobStatus::Queued, "e1", r#"{"n":"a0"}"#);
        job(&log, b, JobStatus::Queued, "e1", r#"{"n":"b0"}"#);
        job(&log, a, JobStatus::Succeeded, "e1", r#"{"n":"a1"}"#);
        log.append_event("e2", b"2").unwrap();
        job(&log, c, JobStatus::Queued, "e2", "{}");
        log.forget(&[c]).unwrap();
        // Read before and after the write: from memory, then from the file.
        assert_eq!(log.read_job(a).unwrap().unwrap(), br#"{"n":"a1"}"#);
        log.write_pending(true).unwrap();
        assert_eq!(log.read_job(a).unwrap().unwrap(), br#"{"n":"a1"}"#);
        assert_eq!(log.unfinished_count(), 1);
    }
    let (log, replayed) = JobLog::open(dir.path(), SEGMENT_BYTES).unwrap();
    assert_eq!(log.read_job(a).unwrap().unwrap(), br#"{"n":"a1"}"#);
    assert_eq!(log.read_job(b).unwrap().unwrap(), br#"{"n":"b0"}"#);
    assert!(!log.contains(c), "a forgotten job came back");
    assert!(!log.has_event("e2"), "an event without jobs is dropped");
    assert_eq!(log.read_event("e1").unwrap().unwrap(), br#"{"x":1}"#);
    assert_eq!(log.unfinished_count(), 1);
    assert_eq!(replayed.dedup.get("e1"), Some(&vec![a, b]));
    assert_eq!(log.select(None, 10, |_| true), vec![b, a]);
    assert_eq!(log.select(Some(b), 10, |_| true), vec![a]);
}

#[test]
fn a_torn_tail_is_cut_and_damage_in_older_segments_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<JobId> = (0..6).map(|_| JobId::new()).collect();
    write_queued(dir.path(), &ids);
    let name = segs(dir.path()).into_iter().last().unwrap();
    let path = dir.path().join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    // Flip a byte inside the third job's frame; tear the last one.
    let frames = frames(dir.path()).unwrap();
    let third: usize = SEGMENT_HEADER + frames[..3].iter().map(|f| f.1).sum::<usize>() + 20;
    bytes[third] ^= 0xff;
    bytes.truncate(bytes.len() - 3);
    std::fs::write(&path, &bytes).unwrap();
    {
        // The newest segment: everything from the damage on is the torn tail.
        let (log, _) = JobLog::open(dir.path(), SEGMENT_BYTES).unwrap();
        assert!(log.contains(ids[1]) && !log.contains(ids[2]) && !log.contains(ids[5]));
    }
    // Damage in an older segment: only the bad frame is lost.
    let dir = tempfile::tempdir().unwrap();
    write_queued(dir.path(), &ids);
    // A newer segment so that the damaged one is not the newest.
    drop(JobLog::open(dir.path(), SEGMENT_BYTES).unwrap());
    let first = dir.path().join(&segs(dir.path())[0]);
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[third] ^= 0xff;
    std::fs::write(&first, &bytes).unwrap();
    let (log, replayed) = JobLog::open(dir.path(), SEGMENT_BYTES).unwrap();
    let kept: Vec<bool> = ids.iter().map(|id| log.contains(*id)).collect();
    assert_eq!(kept, vec![true, true, false, true, true, true]);
    assert!(replayed.damaged_bytes > 0);
}

#[test]
fn a_segment_without_its_header_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let a = JobId::new();
    {
        let (log, _) = JobLog::open(dir.path(), SEGMENT_BYTES).unwrap();
        log.append_event("e", b"{}").unwrap();
        job(&log, a, JobStatus::Queued, "e", "{}");
        log.write_pending(true).unwrap();
    }
    std::fs::write(dir.path().join(format!("{:016}.seg", 999)), b"garbage").unwrap();
    let (log, _) = JobLog::open(dir.path(), SEGMENT_BYTES).unwrap();
    assert!(log.contains(a));
    assert!(segs(dir.path()).iter().any(|s| s.ends_with(".corrupt")));
}

#[test]
fn finished_segments_are_dropped_and_unfinished_jobs_carried_forward() {
    let dir = tempfile::tempdir().unwrap();
    let pad = format!(r#"{{"pad":"{}"}}"#, "x".repeat(400));
    let parked = JobId::new();
    let mut done = Vec::new();
    {
        let (log, _) = JobLog::open(dir.path(), 4096).unwrap();
        log.append_event("p", b"{}").unwrap();
        job(&log, parked, JobStatus::Parked, "p", &pad);
        for i in 0..40 {
            let id = JobId::new();
            log.append_event(&format!("e{i}"), b"{}").unwrap();
            job(&log, id, JobStatus::Queued, &format!("e{i}"), &pad);
            job(&log, id, JobStatus::Succeeded, &format!("e{i}"), &pad);
            done.push(id);
        }
        log.write_pending(true).unwrap();
        let before = segs(dir.path()).len();
        assert!(before > 5, "{before} segments");
        // Retention still keeps the finished jobs: nothing goes.
        assert_eq!(log.drop_segments().unwrap(), 0);
        log.forget(&done).unwrap();
        let dropped = log.drop_segments().unwrap();
        assert!(dropped >= before - 2, "{dropped} of {before} dropped");
        assert_eq!(log.read_job(parked).unwrap().unwrap(), pad.as_bytes());
        assert_eq!(log.read_event("p").unwrap().unwrap(), b"{}");
    }
    let (log, _) = JobLog::open(dir.path(), 4096).unwrap();
    assert_eq!(log.read_job(parked).unwrap().unwrap(), pad.as_bytes());
    assert_eq!(log.entry(parked).unwrap().status, JobStatus::Parked);
    assert!(done.iter().all(|id| !log.contains(*id)));
}
