//! Stores written before the job log kept jobs, events and the queue in sled trees (`jobs`,
//! `events`, `queue`, `parked`). On open they are moved into the log once: events first, then
//! every job record (an undecodable one to the quarantine), made durable, then the trees are
//! emptied. A crash in between moves them again on the next start: a record written twice is
//! only a newer copy of itself.

use super::*;

const TREES: [&str; 4] = ["jobs", "events", "queue", "parked"];

#[derive(Deserialize)]
struct LegacyEvent {
    payload: Value,
}

impl Store {
    pub(super) fn migrate_legacy(&self) -> Result<(), StoreError> {
        let names = self.inner.db.tree_names();
        if !TREES
            .iter()
            .any(|t| names.iter().any(|n| n.as_ref() == t.as_bytes()))
        {
            return Ok(());
        }
        let (events, jobs) = (
            self.inner.db.open_tree("events")?,
            self.inner.db.open_tree("jobs")?,
        );
        let (mut moved_events, mut moved_jobs) = (0usize, 0usize);
        for item in events.iter() {
            let (k, v) = item?;
            let id = String::from_utf8_lossy(&k);
            if let Some(e) = self.decode_or_quarantine::<LegacyEvent>("events", &events, &k, &v)? {
                self.put_event(&id, &e.payload)?;
                moved_events += 1;
            }
        }
        for item in jobs.iter() {
            let (k, v) = item?;
            if let Some(r) = self.decode_or_quarantine::<JobRecord>("jobs", &jobs, &k, &v)? {
                self.put_job(&r)?;
                moved_jobs += 1;
            }
        }
        self.inner.log.write_pending(true)?;
        for t in TREES {
            self.inner.db.drop_tree(t)?;
        }
        self.inner.db.flush()?;
        tracing::info!(
            jobs = moved_jobs,
            events = moved_events,
            "jobs and events of an earlier version moved to the job log"
        );
        Ok(())
    }
}
