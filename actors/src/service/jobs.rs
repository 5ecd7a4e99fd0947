//! Jobs as an operator reads and replays them, dead letters, and the records the store moved
//! aside because they could not be decoded (actors/src/store/quarantine.rs).

use super::handle::{ControlError, ServiceHandle};
use crate::intake::IntakeError;
use crate::model::job::{JobId, JobRecord, JobStatus};
use crate::store::{DeadLetter, QuarantinedRecord};

/// Which jobs to list: newest first, `limit` of them, older than `before`.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub trigger: Option<String>,
    pub status: Option<JobStatus>,
    pub limit: usize,
    pub before: Option<JobId>,
}

/// One page of jobs and the id to pass as `before` for the next (`None` on the last page).
#[derive(Debug, Clone)]
pub struct JobsPage {
    pub jobs: Vec<JobRecord>,
    pub next_before: Option<JobId>,
}

impl ServiceHandle {
    /// A page of job records (without their events).
    pub fn jobs(&self, filter: &JobFilter) -> Result<JobsPage, ControlError> {
        let (jobs, next_before) = self.store.jobs_page(
            filter.trigger.as_deref(),
            filter.status,
            filter.limit,
            filter.before,
        )?;
        Ok(JobsPage { jobs, next_before })
    }

    /// One job with its event and timeline.
    pub fn job(&self, id: JobId) -> Result<JobRecord, ControlError> {
        self.store.get_job(id)?.ok_or(ControlError::NoJob(id))
    }

    /// Runs a finished or dead-lettered job again as new jobs linked to it (its trigger's
    /// preprocessor may fan the event out again); their ids.
    pub async fn replay(&self, id: JobId) -> Result<Vec<JobId>, ControlError> {
        let old = self.job(id)?;
        let trigger = self.registry.get(&old.trigger);
        self.intake
            .replay(
                &old,
                trigger.as_ref().map(|e| e.runtime.as_ref()),
                &self.config.router.retry,
            )
            .await
            .map_err(|e| match e {
                IntakeError::Refused(m) => ControlError::Refused(m),
                e @ (IntakeError::BadEvent(_) | IntakeError::Busy { .. }) => {
                    ControlError::Refused(e.to_string())
                }
                other => ControlError::Internal(other.to_string()),
            })
    }

    /// Jobs whose retries ran out, newest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, ControlError> {
        Ok(self.store.dead_letters()?)
    }

    /// Forgets a dead letter (the job record stays until retention removes it).
    pub fn remove_dead_letter(&self, id: JobId) -> Result<(), ControlError> {
        if self.store.remove_dead_letter(id)? {
            Ok(())
        } else {
            Err(ControlError::NoDeadLetter(id))
        }
    }

    /// Records the store could not decode, oldest first.
    pub fn quarantined(&self) -> Result<Vec<QuarantinedRecord>, ControlError> {
        Ok(self.store.quarantined()?)
    }

    /// Deletes a quarantined record for good.
    pub fn drop_quarantined(&self, id: u64) -> Result<(), ControlError> {
        if self.store.drop_quarantined(id)? {
            Ok(())
        } else {
            Err(ControlError::NoQuarantined(id))
        }
    }
}
