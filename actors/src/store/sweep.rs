//! The sweeper: expired dedup entries, finished jobs past `job_retention` / `max_jobs` (and
//! the events only they referred to), then the job log's segments nothing refers to.

use super::*;

/// How often the sweeper checks whether the log's index outgrew `max_jobs`.
const SWEEP_CHECK: Duration = Duration::from_secs(2);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub jobs_removed: usize,
    pub dedup_removed: usize,
    pub segments_removed: usize,
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
        if report.dedup_removed > 0 {
            self.inner.flags.sled_lazy.store(true, Ordering::Release);
        }
        let jobs = self.sweep_jobs()?;
        report.jobs_removed = jobs.jobs_removed;
        report.segments_removed = jobs.segments_removed;
        Ok(report)
    }

    /// Whether the log holds so many more finished jobs than `max_jobs` that the sweep should
    /// not wait for its minute (the index is in memory: a fast source fills it quickly).
    fn over_max_jobs(&self) -> bool {
        let max = self.inner.config.max_jobs;
        let finished = self
            .inner
            .log
            .len()
            .saturating_sub(self.inner.log.unfinished_count());
        finished > max.saturating_add(max / 4).max(max.saturating_add(10_000))
    }

    /// Finished jobs past retention leave the log's index, then the segments nothing refers to go.
    pub fn sweep_jobs(&self) -> Result<SweepReport, StoreError> {
        let now = Utc::now();
        let mut report = SweepReport::default();
        let cutoff = (now - chrono_duration(self.inner.config.job_retention)).timestamp_millis();
        let mut finished = Vec::new();
        for (id, e) in self.inner.log.scan(|e| e.status.is_final()) {
            if e.status != JobStatus::DeadLettered
                || !self.inner.dead.contains_key(id.as_bytes())?
            {
                finished.push((id, e.finished_ms));
            }
        }
        let over = finished.len().saturating_sub(self.inner.config.max_jobs);
        let evicted: Vec<JobId> = finished
            .into_iter()
            .enumerate()
            .filter(|(i, (_, finished_ms))| *i < over || *finished_ms <= cutoff)
            .map(|(_, (id, _))| id)
            .collect();
        report.jobs_removed = evicted.len();
        self.inner.log.forget(&evicted)?;
        report.segments_removed = self.inner.log.drop_segments()?;
        Ok(report)
    }

    /// Runs [`Store::sweep`] every `every` until the store is dropped.
    pub fn spawn_sweeper(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_CHECK.min(every));
            tick.tick().await;
            let mut last_full = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let store = Store { inner };
                let full = last_full.elapsed() >= every;
                if !full && !store.over_max_jobs() {
                    continue;
                }
                if full {
                    last_full = tokio::time::Instant::now();
                }
                let sweep = move || {
                    if full {
                        store.sweep()
                    } else {
                        store.sweep_jobs()
                    }
                };
                match tokio::task::spawn_blocking(sweep).await {
                    Ok(Ok(r)) if r.jobs_removed + r.dedup_removed + r.segments_removed > 0 => {
                        tracing::info!(
                            jobs = r.jobs_removed,
                            dedup = r.dedup_removed,
                            segments = r.segments_removed,
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
