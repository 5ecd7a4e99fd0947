//! Jobs parked while their trigger is suspended: in the job log with status `parked`, run
//! (released) on resume or cancelled.

use super::*;

impl Store {
    /// Writes jobs of a suspended trigger (their status is `parked`): stored, not queued,
    /// until released or cancelled.
    pub async fn park(
        &self,
        records: &[JobRecord],
        dedup_event_id: Option<&str>,
    ) -> Result<(), StoreError> {
        // Parked is the records' status: writing them is enqueueing them.
        self.enqueue(records, dedup_event_id).await
    }

    fn parked_ids(&self, trigger: &str) -> Vec<JobId> {
        self.inner
            .log
            .scan(|e| e.status == JobStatus::Parked && *e.trigger == *trigger)
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// Queues a trigger's parked jobs (oldest first) and returns them. Each job's status
    /// changes in one record, so a crash mid-release never releases one twice.
    pub async fn unpark(&self, trigger: &str) -> Result<Vec<JobRecord>, StoreError> {
        let mut out = Vec::new();
        for id in self.parked_ids(trigger) {
            if let Some(r) = self.update_job(id, |r| {
                r.status = JobStatus::Queued;
                r.step(TimelineEntry::now("released"));
            })? {
                out.push(r);
            }
        }
        self.commit().await?;
        Ok(out)
    }

    /// Cancels a trigger's parked jobs and returns their ids.
    pub async fn cancel_parked(&self, trigger: &str) -> Result<Vec<JobId>, StoreError> {
        let mut out = Vec::new();
        for id in self.parked_ids(trigger) {
            self.update_job(id, |r| {
                r.status = JobStatus::Cancelled;
                r.finished_at = Some(Utc::now());
                r.step(TimelineEntry::now("cancelled"));
            })?;
            out.push(id);
        }
        self.commit().await?;
        Ok(out)
    }

    pub fn parked_count(&self, trigger: &str) -> usize {
        self.parked_ids(trigger).len()
    }
}
