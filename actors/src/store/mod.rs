//! Everything millgate must not forget, in sled: the durable job queue, job records, the
//! events they came from (each stored once, whatever its fan-out), dead letters and the dedup
//! window. Records that cannot be decoded go to the quarantine (`quarantine.rs`).
//!
//! Durability comes from [`Store::commit`]: a write is only acknowledged upstream after a
//! flush that happened after it. Flushes are shared (group commit): one committer thread takes
//! every writer waiting at that moment, flushes once and wakes them all, which measured ~20x the
//! throughput of a flush per write on this machine kind (docs/architecture.md, "Delivery").

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;

mod api_triggers;
mod parked;
mod quarantine;
mod sweep;

pub use api_triggers::TriggerFlags;
use parked::parked_key;
pub use quarantine::QuarantinedRecord;
pub use sweep::SweepReport;

use crate::model::job::{JobId, JobRecord, JobStatus, TimelineEntry};
use crate::model::settings::StoreConfig;

mod source_state;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(String),
    #[error("corrupt record under {tree}: {reason}")]
    Corrupt { tree: &'static str, reason: String },
    #[error("the store's committer thread has stopped")]
    CommitterGone,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e.to_string())
    }
}

/// A dead letter: a job whose retries ran out, kept until it is replayed or deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub job_id: JobId,
    pub trigger: String,
    pub runnable: String,
    pub error: String,
    pub attempts: u32,
    pub dead_lettered_at: DateTime<Utc>,
}

/// An event as stored, once, for all the jobs it became.
#[derive(Debug, Serialize, Deserialize)]
struct StoredEvent {
    received_at: DateTime<Utc>,
    payload: Value,
}

#[derive(Debug, Serialize, Deserialize)]
struct DedupEntry {
    job_ids: Vec<JobId>,
    expires_at: DateTime<Utc>,
}

type Waiter = oneshot::Sender<Result<(), StoreError>>;

struct Inner {
    db: sled::Db,
    jobs: sled::Tree,
    events: sled::Tree,
    quarantine: sled::Tree,
    queue: sled::Tree,
    dedup: sled::Tree,
    dead: sled::Tree,
    parked: sled::Tree,
    api_triggers: sled::Tree,
    trigger_flags: sled::Tree,
    commits: mpsc::Sender<Waiter>,
    /// Written since the last flush, with nobody waiting ([`Store::commit_soon`]).
    dirty: Arc<AtomicBool>,
    committer: Option<std::thread::JoinHandle<()>>,
    config: StoreConfig,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Close the committer's channel and wait for it to let go of the database, so that the
        // same path can be opened again at once (tests, in-process restarts).
        let (dead, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.commits, dead));
        if let Some(t) = self.committer.take() {
            let _ = t.join();
        }
    }
}

/// Cheap to clone; all clones share one database and one committer.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(&config.path)
            // Durability is ours (group commit); sled's own periodic flush only adds fsyncs.
            .flush_every_ms(None)
            .cache_capacity(config.cache_capacity)
            .open()?;
        let (tx, rx) = mpsc::channel::<Waiter>();
        let committer_db = db.clone();
        let dirty = Arc::new(AtomicBool::new(false));
        let committer_dirty = dirty.clone();
        let committer = std::thread::Builder::new()
            .name("millgate-committer".into())
            .spawn(move || committer(committer_db, rx, committer_dirty))
            .map_err(|e| StoreError::Sled(format!("cannot start committer thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                jobs: db.open_tree("jobs")?,
                events: db.open_tree("events")?,
                quarantine: db.open_tree("quarantine")?,
                queue: db.open_tree("queue")?,
                dedup: db.open_tree("dedup")?,
                dead: db.open_tree("dead_letters")?,
                parked: db.open_tree("parked")?,
                api_triggers: db.open_tree("api_triggers")?,
                trigger_flags: db.open_tree("trigger_flags")?,
                db,
                commits: tx,
                dirty,
                committer: Some(committer),
                config: config.clone(),
            }),
        })
    }

    /// Waits until this is the last handle on the store (the others dropped), or `within` passes.
    pub async fn released_within(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while Arc::strong_count(&self.inner) > 1 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Has what was written before this call flushed within [`LAZY_FLUSH`], without waiting:
    /// for records whose loss in a crash the source makes good (it redelivers), or that are
    /// kept for observability only (a job's outcome, which runs again from the queue).
    pub fn commit_soon(&self) {
        self.inner.dirty.store(true, Ordering::Release);
    }

    /// Waits until everything written before this call is on disk.
    pub async fn commit(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commits
            .send(tx)
            .map_err(|_| StoreError::CommitterGone)?;
        rx.await.map_err(|_| StoreError::CommitterGone)?
    }

    /// Writes new jobs (and the dedup entry of their event) and waits for them to be durable.
    pub async fn enqueue(
        &self,
        records: &[JobRecord],
        dedup_event_id: Option<&str>,
    ) -> Result<(), StoreError> {
        self.write_jobs(records, dedup_event_id, false)?;
        self.commit().await
    }

    /// Stores an event once, under its id, for the jobs that refer to it (not flushed).
    pub fn put_event(&self, event_id: &str, payload: &Value) -> Result<(), StoreError> {
        let stored = StoredEvent {
            received_at: Utc::now(),
            payload: payload.clone(),
        };
        self.inner
            .events
            .insert(event_id.as_bytes(), encode(&stored)?)?;
        Ok(())
    }

    /// The stored event of this id.
    pub fn get_event(&self, event_id: &str) -> Result<Option<Value>, StoreError> {
        let key = event_id.as_bytes();
        match self.inner.events.get(key)? {
            None => Ok(None),
            Some(bytes) => Ok(self
                .decode_or_quarantine::<StoredEvent>("events", &self.inner.events, key, &bytes)?
                .map(|e| e.payload)),
        }
    }

    /// Writes one event's jobs (queued, or parked) and its dedup entry without waiting for the
    /// disk: the caller owns the [`Store::commit`] that makes them durable, so that a batch of
    /// events shares one flush. Nothing may be acknowledged before that commit returns.
    pub fn write_jobs(
        &self,
        records: &[JobRecord],
        dedup_event_id: Option<&str>,
        parked: bool,
    ) -> Result<(), StoreError> {
        // In this order: dedup entry, queue entries, job records. sled recovers a prefix of its
        // writes, so after a torn flush a job record implies its queue entry (else it would
        // never run) and its dedup entry (else a redelivery would be a second job); an entry
        // without its records stands for nothing (`dedup_get`, `unfinished`). Found by
        // tests/chaos.rs. (A sled transaction across the trees livelocked in `Log::reserve`
        // under the Kafka load bench.)
        if let Some(event_id) = dedup_event_id {
            self.put_dedup(event_id, records)?;
        }
        for r in records {
            if parked {
                self.inner
                    .parked
                    .insert(parked_key(&r.trigger, r.job_id), &[])?;
            } else {
                self.inner.queue.insert(r.job_id.as_bytes(), &[])?;
            }
        }
        for r in records {
            self.put_job(r)?;
        }
        Ok(())
    }

    fn put_dedup(&self, event_id: &str, records: &[JobRecord]) -> Result<(), StoreError> {
        let entry = DedupEntry {
            job_ids: records.iter().map(|r| r.job_id).collect(),
            expires_at: Utc::now() + chrono_duration(self.inner.config.dedup_ttl),
        };
        self.inner
            .dedup
            .insert(event_id.as_bytes(), encode(&entry)?)?;
        Ok(())
    }

    pub fn remove_dead_letter(&self, id: JobId) -> Result<bool, StoreError> {
        Ok(self.inner.dead.remove(id.as_bytes())?.is_some())
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
        let iter = match before {
            Some(b) => self.inner.jobs.range(..b.as_bytes().to_vec()),
            None => self.inner.jobs.range::<Vec<u8>, _>(..),
        };
        let mut out = Vec::new();
        for item in iter.rev() {
            let (k, v) = item?;
            let Some(r) = self.read_job(&k, &v, false)? else {
                continue;
            };
            if trigger.is_some_and(|t| t != r.trigger) || status.is_some_and(|s| s != r.status) {
                continue;
            }
            if out.len() == limit {
                let next = out.last().map(|r: &JobRecord| r.job_id);
                return Ok((out, next));
            }
            out.push(r);
        }
        Ok((out, None))
    }

    // ---- triggers added through the API, and operators' enable/suspend flags ----

    /// The jobs an event created, if it was seen within the dedup window.
    pub fn dedup_get(&self, event_id: &str) -> Result<Option<Vec<JobId>>, StoreError> {
        let (tree, key) = (&self.inner.dedup, event_id.as_bytes());
        let Some(bytes) = tree.get(key)? else {
            return Ok(None);
        };
        let entry: Option<DedupEntry> = self.decode_or_quarantine("dedup", tree, key, &bytes)?;
        let Some(entry) = entry.filter(|e| e.expires_at > Utc::now()) else {
            return Ok(None);
        };
        // An entry whose jobs never reached the disk (a crash tore the write after it): the
        // event was not accepted, so it is new. Only young entries can be torn; older ones
        // may have outlived their swept records (`max_jobs`) and still stand for them.
        let written = entry.expires_at - chrono_duration(self.inner.config.dedup_ttl);
        if Utc::now() - written > chrono::Duration::minutes(5) {
            return Ok(Some(entry.job_ids));
        }
        for id in &entry.job_ids {
            if self.inner.jobs.contains_key(id.as_bytes())? {
                return Ok(Some(entry.job_ids));
            }
        }
        tracing::debug!(
            event_id,
            "dedup entry without its jobs (torn write): a new event"
        );
        Ok(None)
    }

    /// A job record without its event (what the router and updates need).
    pub fn job_without_event(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        match self.inner.jobs.get(id.as_bytes())? {
            None => Ok(None),
            Some(bytes) => self.read_job(id.as_bytes(), &bytes, false),
        }
    }

    /// A job record with its event.
    pub fn get_job(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        match self.inner.jobs.get(id.as_bytes())? {
            None => Ok(None),
            Some(bytes) => self.read_job(id.as_bytes(), &bytes, true),
        }
    }

    /// Decodes a job record (quarantined when it cannot be), with its event when asked.
    fn read_job(
        &self,
        key: &[u8],
        bytes: &[u8],
        with_event: bool,
    ) -> Result<Option<JobRecord>, StoreError> {
        let record: Option<JobRecord> =
            self.decode_or_quarantine("jobs", &self.inner.jobs, key, bytes)?;
        let Some(mut record) = record else {
            return Ok(None);
        };
        // Records written before events were stored on their own carry their event inline.
        if with_event && record.event.is_null() {
            record.event = self.get_event(&record.event_id)?.unwrap_or_default();
        }
        Ok(Some(record))
    }

    /// Writes a job record (without its event, which is stored once under its id).
    pub fn put_job(&self, record: &JobRecord) -> Result<(), StoreError> {
        // A record of an older version carried its event inline: keep the event when the record
        // is rewritten without it.
        if !record.event.is_null() && !self.inner.events.contains_key(&record.event_id)? {
            self.put_event(&record.event_id, &record.event)?;
        }
        self.inner
            .jobs
            .insert(record.job_id.as_bytes(), encode(record)?)?;
        Ok(())
    }

    /// Applies `f` to a stored job record and writes it back (not flushed).
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

    /// Marks a job finished and takes it off the durable queue (not flushed: call `commit`
    /// before acknowledging the source).
    pub fn finish(
        &self,
        id: JobId,
        status: JobStatus,
        result: Option<Value>,
        error: Option<String>,
    ) -> Result<Option<JobRecord>, StoreError> {
        let record = self.update_job(id, |r| r.finish(status, result, error.clone()))?;
        if status == JobStatus::DeadLettered {
            if let Some(r) = &record {
                let dl = DeadLetter {
                    job_id: r.job_id,
                    trigger: r.trigger.clone(),
                    runnable: r.runnable.clone(),
                    error: error.unwrap_or_default(),
                    attempts: r.attempts,
                    dead_lettered_at: Utc::now(),
                };
                self.inner.dead.insert(id.as_bytes(), encode(&dl)?)?;
            }
        }
        self.inner.queue.remove(id.as_bytes())?;
        Ok(record)
    }

    /// Records a finished job from the caller's copy, which is authoritative (the router's:
    /// no read-back), and takes it off the durable queue; a dead-lettered one joins the dead
    /// letters. Not flushed.
    pub fn finish_record(&self, record: &JobRecord) -> Result<(), StoreError> {
        self.put_job(record)?;
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
        }
        self.inner.queue.remove(record.job_id.as_bytes())?;
        Ok(())
    }

    /// Jobs that were accepted but never finished, oldest first (to dispatch again on start).
    pub fn unfinished(&self) -> Result<Vec<JobRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.queue.iter() {
            let (key, _) = item?;
            let Some(id) = JobId::from_slice(&key) else {
                continue;
            };
            match self.job_without_event(id)? {
                Some(r) if !r.status.is_final() => out.push(r),
                Some(_) => {
                    self.inner.queue.remove(&key)?;
                }
                None => {
                    tracing::error!(job_id = %id, "queued job has no record; dropping queue entry");
                    self.inner.queue.remove(&key)?;
                }
            }
        }
        Ok(out)
    }

    /// Dead letters, newest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let tree = &self.inner.dead;
        let mut out = Vec::new();
        for item in tree.iter().rev() {
            let (k, v) = item?;
            out.extend(self.decode_or_quarantine("dead_letters", tree, &k, &v)?);
        }
        Ok(out)
    }

    /// Job records with their events, newest first, optionally only one trigger's.
    pub fn jobs(&self, trigger: Option<&str>, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.jobs.iter().rev() {
            let (k, v) = item?;
            let Some(r) = self.read_job(&k, &v, true)? else {
                continue;
            };
            if trigger.is_none_or(|t| t == r.trigger) {
                out.push(r);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    pub fn queue_depth(&self) -> usize {
        self.inner.queue.len()
    }

    pub fn size_on_disk(&self) -> u64 {
        self.inner.db.size_on_disk().unwrap_or(0)
    }
}

/// How long a write that nobody waits for ([`Store::commit_soon`]) may stay off the disk.
const LAZY_FLUSH: Duration = Duration::from_millis(100);

fn committer(db: sled::Db, rx: mpsc::Receiver<Waiter>, dirty: Arc<AtomicBool>) {
    loop {
        let first = match rx.recv_timeout(LAZY_FLUSH) {
            Ok(w) => w,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if dirty.swap(false, Ordering::AcqRel) {
                    if let Err(e) = db.flush() {
                        tracing::error!(error = %e, "store flush failed");
                    }
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if dirty.load(Ordering::Acquire) {
                    let _ = db.flush();
                }
                return;
            }
        };
        // Whatever was written before this flush starts is in it.
        dirty.store(false, Ordering::Release);
        let mut batch = vec![first];
        while let Ok(w) = rx.try_recv() {
            batch.push(w);
        }
        let result = db
            .flush()
            .map(|_| ())
            .map_err(|e| StoreError::Sled(e.to_string()));
        if let Err(e) = &result {
            tracing::error!(error = %e, writers = batch.len(), "store flush failed");
        }
        for w in batch {
            let _ = w.send(result.clone());
        }
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Sled(format!("encode: {e}")))
}

fn decode<T: for<'de> Deserialize<'de>>(tree: &'static str, b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt {
        tree,
        reason: e.to_string(),
    })
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests;
