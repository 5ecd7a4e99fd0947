//! Jobs parked while their trigger is suspended: kept in the `parked` tree by trigger, run\n//! (unparked) on resume or cancelled.

use super::*;

pub(super) fn parked_prefix(trigger: &str) -> Vec<u8> {
    let mut k = trigger.as_bytes().to_vec();
    k.push(0);
    k
}

pub(super) fn parked_key(trigger: &str, id: JobId) -> Vec<u8> {
    let mut k = parked_prefix(trigger);
    k.extend_from_slice(id.as_bytes());
    k
}

impl Store {
    /// Writes jobs of a suspended trigger: stored, not queued, until released or cancelled.
    pub async fn park(
        &self,
        records: &[JobRecord],
        dedup_event_id: Option<&str>,
    ) -> Result<(), StoreError> {
        self.write_jobs(records, dedup_event_id, true)?;
        self.commit().await
    }

    /// Moves a trigger's parked jobs to the queue (oldest first) and returns them.
    pub async fn unpark(&self, trigger: &str) -> Result<Vec<JobRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.parked.scan_prefix(parked_prefix(trigger)) {
            let (key, _) = item?;
            let Some(id) = key
                .get(key.len().saturating_sub(16)..)
                .and_then(JobId::from_slice)
            else {
                continue;
            };
            // A crash between an earlier release's writes can leave the parked entry of a job
            // that is already queued: releasing it again would run it twice.
            let still_parked = self
                .job_without_event(id)?
                .is_some_and(|r| r.status == JobStatus::Parked);
            if !still_parked {
                self.inner.parked.remove(key)?;
                continue;
            }
            if let Some(r) = self.update_job(id, |r| {
                r.status = JobStatus::Queued;
                r.step(TimelineEntry::now("released"));
            })? {
                self.inner.queue.insert(id.as_bytes(), &[])?;
                out.push(r);
            }
            self.inner.parked.remove(key)?;
        }
        self.commit().await?;
        Ok(out)
    }

    /// Cancels a trigger's parked jobs and returns their ids.
    pub async fn cancel_parked(&self, trigger: &str) -> Result<Vec<JobId>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.parked.scan_prefix(parked_prefix(trigger)) {
            let (key, _) = item?;
            let id = key
                .get(key.len().saturating_sub(16)..)
                .and_then(JobId::from_slice);
            // Only jobs still parked: one already released (a crash mid-release) is running.
            let parked = match id {
                Some(id) => self
                    .job_without_event(id)?
                    .is_some_and(|r| r.status == JobStatus::Parked)
                    .then_some(id),
                None => None,
            };
            if let Some(id) = parked {
                self.update_job(id, |r| {
                    r.status = JobStatus::Cancelled;
                    r.finished_at = Some(Utc::now());
                    r.step(TimelineEntry::now("cancelled"));
                })?;
                out.push(id);
            }
            self.inner.parked.remove(key)?;
        }
        self.commit().await?;
        Ok(out)
    }

    pub fn parked_count(&self, trigger: &str) -> usize {
        self.inner
            .parked
            .scan_prefix(parked_prefix(trigger))
            .count()
    }
}
