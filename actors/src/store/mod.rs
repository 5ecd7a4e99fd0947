//! Everything millgate must not forget. The job log (`joblog/`) holds the job queue, job
//! records and the events they came from (each stored once, whatever its fan-out); sled holds
//! what the service owns long-term: dead letters, the dedup window, source state, triggers
//! added through the API. Records that cannot be decoded go to the quarantine (`quarantine.rs`).
//!
//! Durability comes from [`Store::commit`]: a write is only acknowledged upstream after a
//! sync that happened after it. Syncs are shared (group commit): one committer thread takes
//! every writer waiting at that moment, writes and syncs once and wakes them all
//! (docs/architecture.md, "Delivery"; `[store] durability` says whether "sync" is fdatasync or
//! only the write to the OS).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;

mod api_triggers;
pub mod joblog;
mod jobs;
mod legacy;
mod parked;
mod quarantine;
mod sweep;

pub use api_triggers::TriggerFlags;
pub use quarantine::QuarantinedRecord;
pub use sweep::SweepReport;

use crate::model::job::{JobId, JobRecord, JobStatus, TimelineEntry};
use crate::model::settings::{Durability, StoreConfig};
use joblog::JobLog;

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

#[derive(Debug, Serialize, Deserialize)]
struct DedupEntry {
    job_ids: Vec<JobId>,
    expires_at: DateTime<Utc>,
}

type Waiter = oneshot::Sender<Result<(), StoreError>>;

struct Inner {
    db: sled::Db,
    log: Arc<JobLog>,
    quarantine: sled::Tree,
    dedup: sled::Tree,
    dead: sled::Tree,
    api_triggers: sled::Tree,
    trigger_flags: sled::Tree,
    commits: mpsc::Sender<Waiter>,
    flags: Arc<Dirty>,
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

/// What the committer must flush besides the job log.
#[derive(Default)]
struct Dirty {
    /// sled writes the next [`Store::commit`] must include (dead letters, source state, ...).
    sled: AtomicBool,
    /// sled writes nobody waits for (dedup entries: the job log restores them after a crash).
    sled_lazy: AtomicBool,
}

impl Store {
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        Self::open_with_segments(config, joblog::SEGMENT_BYTES)
    }

    pub(crate) fn open_with_segments(
        config: &StoreConfig,
        segment_bytes: u64,
    ) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(&config.path)
            // Durability is ours (group commit); sled's own periodic flush only adds fsyncs.
            .flush_every_ms(None)
            .cache_capacity(config.cache_capacity)
            .open()?;
        let (log, replayed) = JobLog::open(&config.path.join("joblog"), segment_bytes)?;
        let log = Arc::new(log);
        let (tx, rx) = mpsc::channel::<Waiter>();
        let flags = Arc::new(Dirty::default());
        let committer = {
            let (db, log, flags) = (db.clone(), log.clone(), flags.clone());
            let fsync = config.durability == Durability::Fsync;
            std::thread::Builder::new()
                .name("millgate-committer".into())
                .spawn(move || committer(db, log, rx, flags, fsync))
                .map_err(|e| StoreError::Sled(format!("cannot start committer thread: {e}")))?
        };
        let store = Self {
            inner: Arc::new(Inner {
                quarantine: db.open_tree("quarantine")?,
                dedup: db.open_tree("dedup")?,
                dead: db.open_tree("dead_letters")?,
                api_triggers: db.open_tree("api_triggers")?,
                trigger_flags: db.open_tree("trigger_flags")?,
                db,
                log,
                commits: tx,
                flags,
                committer: Some(committer),
                config: config.clone(),
            }),
        };
        store.after_replay(replayed)?;
        store.migrate_legacy()?;
        Ok(store)
    }

    /// Acts on what the job log's replay found: unreadable frames to the quarantine, dedup
    /// entries lost with the lazy sled flush written again.
    fn after_replay(&self, replayed: joblog::Replayed) -> Result<(), StoreError> {
        for (what, bytes, reason) in replayed.unreadable {
            self.quarantine_raw("joblog", what.as_bytes(), &bytes, &reason)?;
        }
        for (event_id, job_ids) in replayed.dedup {
            // Restored for what is left of the window the entry had when it was written.
            let expires = job_ids.iter().filter_map(|id| self.dedup_expiry(*id)).min();
            let expires = expires.filter(|e| *e > Utc::now());
            if let Some(expires_at) = expires {
                if !self.inner.dedup.contains_key(event_id.as_bytes())? {
                    self.put_dedup_entry(&event_id, job_ids, expires_at)?;
                }
            }
        }
        if replayed.damaged_bytes > 0 {
            tracing::error!(
                bytes = replayed.damaged_bytes,
                "the job log had damaged bytes; the jobs in them are lost"
            );
        }
        self.sled_written();
        Ok(())
    }

    /// Marks sled writes the next [`Store::commit`] must make durable.
    fn sled_written(&self) {
        self.inner.flags.sled.store(true, Ordering::Release);
    }

    /// Makes sled writes made before this call durable (with whatever the log holds).
    pub(crate) async fn commit_all(&self) -> Result<(), StoreError> {
        self.sled_written();
        self.commit().await
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

    /// Waits until everything written before this call is on disk.
    pub async fn commit(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commits
            .send(tx)
            .map_err(|_| StoreError::CommitterGone)?;
        rx.await.map_err(|_| StoreError::CommitterGone)?
    }

    fn put_dedup(&self, event_id: &str, records: &[JobRecord]) -> Result<(), StoreError> {
        let expires_at = Utc::now() + chrono_duration(self.inner.config.dedup_ttl);
        self.put_dedup_entry(
            event_id,
            records.iter().map(|r| r.job_id).collect(),
            expires_at,
        )
    }

    /// When the dedup window of an event whose job this is ends (job ids carry their creation
    /// time: UUIDv7).
    fn dedup_expiry(&self, id: JobId) -> Option<DateTime<Utc>> {
        let (secs, nanos) = id.0.get_timestamp()?.to_unix();
        let created = DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)?;
        Some(created + chrono_duration(self.inner.config.dedup_ttl))
    }

    fn put_dedup_entry(
        &self,
        event_id: &str,
        job_ids: Vec<JobId>,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let entry = DedupEntry {
            job_ids,
            expires_at,
        };
        self.inner
            .dedup
            .insert(event_id.as_bytes(), encode(&entry)?)?;
        self.inner.flags.sled_lazy.store(true, Ordering::Release);
        Ok(())
    }

    pub fn remove_dead_letter(&self, id: JobId) -> Result<bool, StoreError> {
        let removed = self.inner.dead.remove(id.as_bytes())?.is_some();
        self.sled_written();
        Ok(removed)
    }

    /// The jobs an event created, if it was seen within the dedup window, or if its jobs are
    /// still in the job log (which is the whole window for sources that redeliver: see
    /// the intake's `stage`).
    pub fn dedup_get(&self, event_id: &str) -> Result<Option<Vec<JobId>>, StoreError> {
        if let Some(ids) = self.inner.log.event_jobs(event_id) {
            // Within `dedup_ttl` of the jobs' creation only, as a sled entry would be.
            let now = Utc::now();
            if ids
                .iter()
                .any(|id| self.dedup_expiry(*id).is_some_and(|e| e > now))
            {
                return Ok(Some(ids));
            }
        }
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
        if entry.job_ids.iter().any(|id| self.inner.log.contains(*id)) {
            return Ok(Some(entry.job_ids));
        }
        tracing::debug!(
            event_id,
            "dedup entry without its jobs (torn write): a new event"
        );
        Ok(None)
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

    pub fn size_on_disk(&self) -> u64 {
        self.inner.db.size_on_disk().unwrap_or(0) + self.inner.log.size_on_disk()
    }
}

/// How long a write that nobody waits for (jobs of sources that redeliver, outcomes) may stay
/// off the disk: the committer writes and syncs the job log at least this often.
const LAZY_FLUSH: Duration = Duration::from_millis(100);

/// Writes (and syncs) what was appended and nobody waits for, and flushes sled's lazy writes.
fn lazy_flush(db: &sled::Db, log: &JobLog, flags: &Dirty) {
    if let Err(e) = log.write_pending(true) {
        tracing::error!(error = %e, "job log write failed");
    }
    let sled_dirty = flags.sled_lazy.swap(false, Ordering::AcqRel);
    if (flags.sled.swap(false, Ordering::AcqRel) || sled_dirty) && db.flush().is_err() {
        tracing::error!("store flush failed");
    }
}

fn committer(
    db: sled::Db,
    log: Arc<JobLog>,
    rx: mpsc::Receiver<Waiter>,
    flags: Arc<Dirty>,
    fsync: bool,
) {
    let mut last_lazy = std::time::Instant::now();
    loop {
        let first = match rx.recv_timeout(LAZY_FLUSH) {
            Ok(w) => w,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                lazy_flush(&db, &log, &flags);
                last_lazy = std::time::Instant::now();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                lazy_flush(&db, &log, &flags);
                return;
            }
        };
        let mut batch = vec![first];
        while let Ok(w) = rx.try_recv() {
            batch.push(w);
        }
        // Whatever was appended before this write starts is in it.
        let mut result = log.write_pending(fsync);
        if result.is_ok() && flags.sled.swap(false, Ordering::AcqRel) {
            result = db
                .flush()
                .map(|_| ())
                .map_err(|e| StoreError::Sled(e.to_string()));
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, writers = batch.len(), "store write failed");
        }
        for w in batch {
            let _ = w.send(result.clone());
        }
        // Under steady load the timeout never fires: lazy writes and `os` syncs still happen.
        if last_lazy.elapsed() >= LAZY_FLUSH {
            lazy_flush(&db, &log, &flags);
            last_lazy = std::time::Instant::now();
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
