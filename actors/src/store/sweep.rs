//! The sweeper: expired dedup entries, finished jobs past `job_retention` / `max_jobs`, and\n//! events no job refers to any more.

use super::*;

/// Events younger than this are kept by the sweep even when no job refers to them yet: their
/// jobs may be being written at that very moment.
pub(super) const EVENT_SWEEP_GRACE: Duration = Duration::from_secs(600);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub jobs_removed: usize,
    pub dedup_removed: usize,
    pub events_removed: usize,
}

impl Store {
    /// Drops expired dedup entries and finished job records past retention. Dead-lettered
    /// records stay while their dead letter exists.
    pub fn sweep(&self) -> Result<SweepReport, StoreError> {
        let now = Utc::now();
        let mut report = SweepReport::default();
        for item in self.inner.dedup.iter() {
            let (k, v) = item?;
            let expired = decode::<DedupEntry>("dedup", &v)
                .map(|e| e.expires_at <= now)
                .unwrap_or(true);
            if expired {
                self.inner.dedup.remove(k)?;
                report.dedup_removed += 1;
            }
        }
        let cutoff = now - chrono_duration(self.inner.config.job_retention);
        let mut finished = Vec::new();
        // Events still referred to by a job that stays.
        let mut referenced: HashMap<String, bool> = HashMap::new();
        for item in self.inner.jobs.iter() {
            let (k, v) = item?;
            let Some(r) = self.read_job(&k, &v, false)? else {
                continue;
            };
            if matches!(r.status, JobStatus::Succeeded | JobStatus::Cancelled)
                || (r.status == JobStatus::DeadLettered && !self.inner.dead.contains_key(&k)?)
            {
                finished.push((k, r.finished_at.unwrap_or(r.created_at), r.event_id));
            } else {
                referenced.insert(r.event_id, true);
            }
        }
        let over = finished.len().saturating_sub(self.inner.config.max_jobs);
        for (i, (k, finished_at, event_id)) in finished.into_iter().enumerate() {
            if i < over || finished_at < cutoff {
                self.inner.jobs.remove(k)?;
                report.jobs_removed += 1;
            } else {
                referenced.insert(event_id, true);
            }
        }
        let grace_cutoff = now - chrono_duration(EVENT_SWEEP_GRACE);
        for item in self.inner.events.iter() {
            let (k, v) = item?;
            if referenced.contains_key(String::from_utf8_lossy(&k).as_ref()) {
                continue;
            }
            let old = self
                .decode_or_quarantine::<StoredEvent>("events", &self.inner.events, &k, &v)?
                .is_some_and(|e| e.received_at < grace_cutoff);
            if old {
                self.inner.events.remove(k)?;
                report.events_removed += 1;
            }
        }
        Ok(report)
    }

    /// Runs [`Store::sweep`] every `every` until the store is dropped.
    pub fn spawn_sweeper(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let store = Store { inner };
                match tokio::task::spawn_blocking(move || store.sweep()).await {
                    Ok(Ok(r)) if r.jobs_removed + r.dedup_removed + r.events_removed > 0 => {
                        tracing::info!(
                            jobs = r.jobs_removed,
                            dedup = r.dedup_removed,
                            events = r.events_removed,
                            "store sweep"
                        )
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "store sweep failed"),
                    _ => {}
                }
            }
        })
    }
}
