//! Jobs and events on the job log (`joblog/`): writing new jobs, state changes, reads for the
//! admin API, and the unfinished jobs to dispatch again on start.

use super::*;

fn millis(t: Option<DateTime<Utc>>) -> i64 {
    t.map_or(0, |t| t.timestamp_millis().max(1))
}

impl Store {
    /// Writes new jobs (and the dedup entry of their event) and waits for them to be durable.
    pub async fn enqueue(
        &self,
        records: &[JobRecord],
        dedup_event_id: Option<&str>,
    ) -> Result<(), StoreError> {
        self.write_jobs(records, dedup_event_id)?;
        self.commit().await
    }

    /// Stores an event once, under its id, for the jobs that refer to it (not yet durable).
    pub fn put_event(&self, event_id: &str, payload: &Value) -> Result<(), StoreError> {
        self.inner.log.append_event(event_id, &encode(payload)?)
    }

    /// The stored event of this id.
    pub fn get_event(&self, event_id: &str) -> Result<Option<Value>, StoreError> {
        let Some(bytes) = self.inner.log.read_event(event_id)? else {
            return Ok(None);
        };
        let event = self.decode_logged("events", event_id.as_bytes(), &bytes)?;
        if event.is_none() {
            // Its jobs still read, without their event.
            self.inner.log.forget_event(event_id);
        }
        Ok(event)
    }

    /// Decodes a record read from the job log; one that does not decode goes to the quarantine
    /// and `None` is returned (the caller takes it out of the log's index: quarantined once).
    fn decode_logged<T: for<'de> Deserialize<'de>>(
        &self,
        what: &'static str,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match decode::<T>(what, bytes) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                self.quarantine_raw(what, key, bytes, &e.to_string())?;
                Ok(None)
            }
        }
    }

    /// Writes one event's jobs (queued, or parked when their status says so) and its dedup
    /// entry without waiting for the disk: the caller owns the [`Store::commit`] that makes
    /// them durable, so that a batch of events shares one sync. Nothing may be acknowledged
    /// before that commit returns.
    pub fn write_jobs(
        &self,
        records: &[JobRecord],
        dedup_event_id: Option<&str>,
    ) -> Result<(), StoreError> {
        // The dedup entry may reach the disk before the jobs (sled flushes on its own
        // schedule): `dedup_get` reads a young entry without jobs as a new event. After a
        // crash the log's jobs restore a lost entry (`after_replay`).
        if let Some(event_id) = dedup_event_id {
            self.put_dedup(event_id, records)?;
        }
        for r in records {
            self.append_record(r, dedup_event_id.is_some())?;
        }
        Ok(())
    }

    fn append_record(&self, record: &JobRecord, dedup: bool) -> Result<(), StoreError> {
        self.inner.log.append_job(joblog::JobFrame {
            job_id: record.job_id,
            status: record.status,
            dedup,
            finished_ms: if record.status.is_final() {
                millis(record.finished_at.or(Some(record.created_at)))
            } else {
                0
            },
            trigger: &record.trigger,
            event_id: &record.event_id,
            json: &encode(record)?,
        })
    }

    /// Writes a job record (without its event, which is stored once under its id).
    pub fn put_job(&self, record: &JobRecord) -> Result<(), StoreError> {
        // A record of an older version carried its event inline: keep the event when the record
        // is rewritten without it.
        if !record.event.is_null() && !self.inner.log.has_event(&record.event_id) {
            self.put_event(&record.event_id, &record.event)?;
        }
        self.append_record(record, false)
    }

    /// A job record without its event (what the router and updates need).
    pub fn job_without_event(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        let Some(bytes) = self.inner.log.read_job(id)? else {
            return Ok(None);
        };
        let record = self.decode_logged("jobs", id.as_bytes(), &bytes)?;
        if record.is_none() {
            self.inner.log.forget(&[id])?;
        }
        Ok(record)
    }

    /// A job record with its event.
    pub fn get_job(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        let Some(mut record) = self.job_without_event(id)? else {
            return Ok(None);
        };
        if record.event.is_null() {
            record.event = self.get_event(&record.event_id)?.unwrap_or_default();
        }
        Ok(Some(record))
    }

    /// Applies `f` to a stored job record and writes it back (not yet durable).
    pub fn update_job(
        &self,
        id: JobId,
        f: impl FnOnce(&mut JobRecord),
    ) -> Result<Option<JobRecord>, StoreError> {
        let Some(mut record) = self.job_without_event(id)? else {
            return Ok(None);
        };
        f(&mut record);
        self.put_job(&record)?;
        Ok(Some(record))
    }

    /// Marks a job finished (not yet durable: call `commit` before acknowledging the source).
    pub fn finish(
        &self,
        id: JobId,
        status: JobStatus,
        result: Option<Value>,
        error: Option<String>,
    ) -> Result<Option<JobRecord>, StoreError> {
        let Some(mut record) = self.job_without_event(id)? else {
            return Ok(None);
        };
        record.finish(status, result, error);
        self.finish_record(&record)?;
        Ok(Some(record))
    }

    /// Records a finished job from the caller's copy, which is authoritative (the router's:
    /// no read-back); a dead-lettered one joins the dead letters. Not yet durable.
    pub fn finish_record(&self, record: &JobRecord) -> Result<(), StoreError> {
        if record.status == JobStatus::DeadLettered {
            let dl = DeadLetter {
                job_id: record.job_id,
                trigger: record.trigger.clone(),
                runnable: record.runnable.clone(),
                error: record.error.clone().unwrap_or_default(),
                attempts: record.attempts,
                dead_lettered_at: record.finished_at.unwrap_or_else(Utc::now),
            };
            self.inner
                .dead
                .insert(record.job_id.as_bytes(), encode(&dl)?)?;
            self.sled_written();
        }
        self.put_job(record)
    }

    /// Jobs that were accepted but never finished, oldest first (to dispatch again on start).
    pub fn unfinished(&self) -> Result<Vec<JobRecord>, StoreError> {
        let ids = self.inner.log.scan(|e| {
            matches!(
                e.status,
                JobStatus::Queued | JobStatus::Running | JobStatus::Retrying
            )
        });
        let mut out = Vec::with_capacity(ids.len());
        for (id, _) in ids {
            out.extend(self.job_without_event(id)?);
        }
        Ok(out)
    }

    /// Job records newest first, filtered, starting after `before` (exclusive). Returns the
    /// page and the id to pass as `before` for the next one.
    pub fn jobs_page(
        &self,
        trigger: Option<&str>,
        status: Option<JobStatus>,
        limit: usize,
        before: Option<JobId>,
    ) -> Result<(Vec<JobRecord>, Option<JobId>), StoreError> {
        let keep = |e: &joblog::JobEntry| {
            trigger.is_none_or(|t| *e.trigger == *t) && status.is_none_or(|s| s == e.status)
        };
        let mut before = before;
        let mut out = Vec::new();
        // A record moved to the quarantine while reading leaves a gap: read on to fill it.
        loop {
            let ids = self.inner.log.select(before, limit + 1 - out.len(), keep);
            let exhausted = ids.len() < limit + 1 - out.len();
            for id in ids {
                before = Some(id);
                if out.len() == limit {
                    let next = out.last().map(|r: &JobRecord| r.job_id);
                    return Ok((out, next));
                }
                out.extend(self.job_without_event(id)?);
            }
            if exhausted {
                return Ok((out, None));
            }
        }
    }

    /// Job records with their events, newest first, optionally only one trigger's.
    pub fn jobs(&self, trigger: Option<&str>, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        let ids = self
            .inner
            .log
            .select(None, limit, |e| trigger.is_none_or(|t| *e.trigger == *t));
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.get_job(id)?);
        }
        Ok(out)
    }

    /// Jobs queued, running or waiting for a retry.
    pub fn queue_depth(&self) -> usize {
        self.inner.log.unfinished_count()
    }
}
