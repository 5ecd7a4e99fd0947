//! The job log: job records and events as frames appended to segment files, with an in-memory
//! index of every job it holds (docs/job-log.md has the evaluation and the design).
//!
//! Every state change of a job appends its whole record (a few hundred bytes); the index points
//! at the newest, so reads are one `pread` and settlement never reads back. Appends only copy
//! into memory: [`JobLog::write_pending`] (the store's committer thread, one call per group of
//! writers) writes them with `pwrite` and syncs, which is what makes them durable. Segments are
//! dropped oldest first once nothing in them is referenced: a prefix only, so a `forget` frame
//! never outlives the records it forgets. Jobs that pin an old segment while unfinished are
//! carried forward (their frames re-appended) so that one parked job does not keep the disk.
//!
//! Replay on open reads every segment once. It never refuses to start: a torn tail is cut, a
//! damaged frame in an older segment is skipped to the next valid one, a segment without a
//! header is renamed `.corrupt`, and a valid frame that does not parse is handed back for the
//! quarantine.

pub mod frame;
mod replay;
mod write;

pub use replay::frames;
use replay::replay_segment;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use frame::*;

use super::StoreError;
use crate::model::job::{JobId, JobStatus};

/// Segments are closed past this size (one frame may cross it).
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Where a frame is: segment, offset, whole frame length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ref {
    seg: u64,
    off: u64,
    len: u32,
}

/// A job record to append: the fixed fields replay reads, and the record's JSON.
pub struct JobFrame<'a> {
    pub job_id: JobId,
    pub status: JobStatus,
    /// Written with a dedup entry under `event_id`.
    pub dedup: bool,
    /// When the job became final (ms since the epoch), 0 while it is not.
    pub finished_ms: i64,
    pub trigger: &'a str,
    pub event_id: &'a str,
    pub json: &'a [u8],
}

/// What the index knows of a job without reading its record.
#[derive(Debug, Clone)]
pub struct JobEntry {
    pub status: JobStatus,
    pub trigger: Arc<str>,
    pub event_id: Arc<str>,
    /// When the job became final (ms since the epoch), 0 while it is not.
    pub finished_ms: i64,
    at: Ref,
}

struct EventEntry {
    at: Ref,
    /// Jobs in the index that came from this event.
    jobs: u32,
    /// The first of them (an event's jobs are written together: the rest follow it by id).
    first: Option<JobId>,
}

struct Segment {
    file: Arc<File>,
    len: u64,
    /// Index entries (jobs' newest frames, events) that point into this segment.
    refs: u64,
}

/// Bytes appended to one segment at `off`, not yet written.
struct Chunk {
    seg: u64,
    off: u64,
    bytes: Vec<u8>,
}

struct State {
    segments: BTreeMap<u64, Segment>,
    active: u64,
    pending: Vec<Chunk>,
    /// Chunks taken by a writer and not yet written: readers still find them here.
    writing: Vec<Arc<Vec<Chunk>>>,
    /// Segments written but not synced (durability `os`).
    unsynced: BTreeSet<u64>,
    /// A segment was created or removed since the directory was last synced.
    dir_dirty: bool,
    index: BTreeMap<JobId, JobEntry>,
    events: HashMap<Arc<str>, EventEntry>,
    names: HashSet<Arc<str>>,
    unfinished: usize,
}

/// What replay found that the store must act on.
#[derive(Default)]
pub struct Replayed {
    /// Valid frames that do not parse: (what, raw bytes, reason) for the quarantine.
    pub unreadable: Vec<(String, Vec<u8>, String)>,
    /// Event ids written with a dedup entry, and their jobs (to restore lost dedup entries).
    pub dedup: HashMap<String, Vec<JobId>>,
    pub damaged_bytes: u64,
}

pub struct JobLog {
    dir: PathBuf,
    segment_bytes: u64,
    state: Mutex<State>,
    /// Held for a whole write, so that a write that returns covers every earlier append.
    write_lock: Mutex<()>,
}

fn io(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Sled(format!("job log: {what}: {e}"))
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016}.seg"))
}

fn is_unfinished(s: JobStatus) -> bool {
    matches!(
        s,
        JobStatus::Queued | JobStatus::Running | JobStatus::Retrying
    )
}

impl JobLog {
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(Self, Replayed), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io("create directory", e))?;
        let mut seqs = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io("list", e))? {
            let name = entry.map_err(|e| io("list", e))?.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name
                .strip_suffix(".seg")
                .and_then(|s| s.parse::<u64>().ok())
            {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let mut state = State {
            segments: BTreeMap::new(),
            active: 0,
            pending: Vec::new(),
            writing: Vec::new(),
            unsynced: BTreeSet::new(),
            dir_dirty: false,
            index: BTreeMap::new(),
            events: HashMap::new(),
            names: HashSet::new(),
            unfinished: 0,
        };
        let mut replayed = Replayed::default();
        let last = seqs.last().copied();
        for seq in seqs {
            replay_segment(dir, seq, Some(seq) == last, &mut state, &mut replayed)?;
        }
        // Events none of whose jobs were written (a crash between the two): nothing refers to them.
        let orphans: Vec<Arc<str>> = state
            .events
            .iter()
            .filter(|(_, e)| e.jobs == 0)
            .map(|(k, _)| k.clone())
            .collect();
        for id in orphans {
            if let Some(e) = state.events.remove(&id) {
                state.unref(e.at);
            }
        }
        let log = JobLog {
            dir: dir.to_path_buf(),
            segment_bytes,
            state: Mutex::new(state),
            write_lock: Mutex::new(()),
        };
        {
            // New appends go to a new segment: a damaged tail is never written over.
            let mut st = log.lock();
            let next = st.segments.keys().next_back().map_or(1, |s| s + 1);
            log.create_segment(&mut st, next)?;
        }
        log.write_pending(true)?;
        Ok((log, replayed))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the index half-updated in a way that
        // matters more than stopping: keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn create_segment(&self, st: &mut State, seq: u64) -> Result<(), StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(segment_path(&self.dir, seq))
            .map_err(|e| io("create segment", e))?;
        st.segments.insert(
            seq,
            Segment {
                file: Arc::new(file),
                len: SEGMENT_HEADER as u64,
                refs: 0,
            },
        );
        st.pending.push(Chunk {
            seg: seq,
            off: 0,
            bytes: segment_header(seq).to_vec(),
        });
        st.active = seq;
        st.dir_dirty = true;
        Ok(())
    }

    /// Appends a frame to the active segment (a new one when it is full).
    fn append(
        &self,
        st: &mut State,
        kind: u8,
        body: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Ref, StoreError> {
        let seg = st.active;
        let seg_len = st.segments.get(&seg).map_or(0, |s| s.len);
        if st.pending.last().map(|c| c.seg) != Some(seg) {
            st.pending.push(Chunk {
                seg,
                off: seg_len,
                bytes: Vec::with_capacity(4096),
            });
        }
        let Some(chunk) = st.pending.last_mut() else {
            return Err(StoreError::Sled("job log: no open chunk".into()));
        };
        let start = chunk.bytes.len();
        let len = write_frame(&mut chunk.bytes, kind, body);
        let mut at = Ref {
            seg,
            off: seg_len,
            len: len as u32,
        };
        if seg_len + len as u64 > self.segment_bytes && seg_len > SEGMENT_HEADER as u64 {
            let frame = chunk.bytes.split_off(start);
            if chunk.bytes.is_empty() {
                st.pending.pop();
            }
            self.create_segment(st, seg + 1)?;
            at = Ref {
                seg: seg + 1,
                off: SEGMENT_HEADER as u64,
                len: len as u32,
            };
            if let Some(c) = st.pending.last_mut() {
                c.bytes.extend_from_slice(&frame);
            }
        }
        if let Some(s) = st.segments.get_mut(&at.seg) {
            s.len += len as u64;
        }
        Ok(at)
    }

    pub fn append_event(&self, id: &str, payload_json: &[u8]) -> Result<(), StoreError> {
        let mut st = self.lock();
        let at = self.append(&mut st, KIND_EVENT, |o| {
            put_str(o, id);
            o.extend_from_slice(payload_json);
        })?;
        st.apply_event(id, at);
        Ok(())
    }

    pub fn append_job(&self, job: JobFrame<'_>) -> Result<(), StoreError> {
        let flags = if job.dedup { FLAG_DEDUP } else { 0 };
        let mut st = self.lock();
        let at = self.append(&mut st, KIND_JOB, |o| {
            o.extend_from_slice(job.job_id.as_bytes());
            o.push(status_code(job.status));
            o.push(flags);
            o.extend_from_slice(&job.finished_ms.to_le_bytes());
            put_str(o, job.trigger);
            put_str(o, job.event_id);
            o.extend_from_slice(job.json);
        })?;
        st.apply_job(
            job.job_id,
            job.status,
            job.finished_ms,
            job.trigger,
            job.event_id,
            at,
        );
        Ok(())
    }

    /// Removes jobs from the index, durably once written (a `forget` frame each).
    pub fn forget(&self, ids: &[JobId]) -> Result<(), StoreError> {
        let mut st = self.lock();
        for id in ids {
            if st.index.contains_key(id) {
                self.append(&mut st, KIND_FORGET, |o| o.extend_from_slice(id.as_bytes()))?;
                st.apply_forget(*id);
            }
        }
        Ok(())
    }

    /// Takes an event out of the index (it was quarantined); its jobs read without it. Replay
    /// finds it again and the first read quarantines it again: at most once per start.
    pub fn forget_event(&self, id: &str) {
        let mut st = self.lock();
        if let Some(ev) = st.events.remove(id) {
            st.unref(ev.at);
        }
    }

    pub fn entry(&self, id: JobId) -> Option<JobEntry> {
        self.lock().index.get(&id).cloned()
    }

    pub fn contains(&self, id: JobId) -> bool {
        self.lock().index.contains_key(&id)
    }

    pub fn has_event(&self, id: &str) -> bool {
        self.lock().events.contains_key(id)
    }

    /// The jobs in the index that came from this event (none when it is not in the log).
    pub fn event_jobs(&self, event_id: &str) -> Option<Vec<JobId>> {
        let st = self.lock();
        let ev = st.events.get(event_id)?;
        let first = ev.first?;
        let ids: Vec<JobId> = st
            .index
            .range(first..)
            .filter(|(_, e)| *e.event_id == *event_id)
            .take(ev.jobs as usize)
            .map(|(id, _)| *id)
            .collect();
        (!ids.is_empty()).then_some(ids)
    }

    /// The JSON of a job's newest record.
    pub fn read_job(&self, id: JobId) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(at) = self.lock().index.get(&id).map(|e| e.at) else {
            return Ok(None);
        };
        let body = self.read_body(at)?;
        Ok(read_job_frame(&body).map(|h| h.json.to_vec()))
    }

    /// The payload JSON of an event.
    pub fn read_event(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(at) = self.lock().events.get(id).map(|e| e.at) else {
            return Ok(None);
        };
        let body = self.read_body(at)?;
        Ok(read_event(&body).map(|(_, p)| p.to_vec()))
    }

    /// A frame's kind and body, from memory while it is not written yet, else from its file.
    fn read_frame_at(&self, at: Ref) -> Result<(u8, Vec<u8>), StoreError> {
        let file = {
            let st = self.lock();
            let unwritten = st
                .pending
                .iter()
                .chain(st.writing.iter().flat_map(|w| w.iter()));
            for c in unwritten {
                let end = c.off + c.bytes.len() as u64;
                if c.seg == at.seg && at.off >= c.off && at.off + at.len as u64 <= end {
                    let s = (at.off - c.off) as usize;
                    return parse_whole_frame(&c.bytes[s..s + at.len as usize], at);
                }
            }
            match st.segments.get(&at.seg) {
                Some(s) => s.file.clone(),
                None => {
                    return Err(StoreError::Sled(format!(
                        "job log: segment {} is gone",
                        at.seg
                    )))
                }
            }
        };
        let mut buf = vec![0u8; at.len as usize];
        file.read_exact_at(&mut buf, at.off)
            .map_err(|e| io("read", e))?;
        parse_whole_frame(&buf, at)
    }

    fn read_body(&self, at: Ref) -> Result<Vec<u8>, StoreError> {
        Ok(self.read_frame_at(at)?.1)
    }

    /// Ids of the jobs `keep` selects, newest first, before `before` (exclusive), at most `limit`.
    pub fn select(
        &self,
        before: Option<JobId>,
        limit: usize,
        mut keep: impl FnMut(&JobEntry) -> bool,
    ) -> Vec<JobId> {
        let st = self.lock();
        let range = match before {
            Some(b) => st.index.range(..b),
            None => st.index.range(..),
        };
        range
            .rev()
            .filter(|(_, e)| keep(e))
            .take(limit)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Ids of the jobs `keep` selects, oldest first, with their entries.
    pub fn scan(&self, mut keep: impl FnMut(&JobEntry) -> bool) -> Vec<(JobId, JobEntry)> {
        let st = self.lock();
        st.index
            .iter()
            .filter(|(_, e)| keep(e))
            .map(|(id, e)| (*id, e.clone()))
            .collect()
    }

    /// Jobs in the index.
    pub fn len(&self) -> usize {
        self.lock().index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queued, running or retrying jobs.
    pub fn unfinished_count(&self) -> usize {
        self.lock().unfinished
    }

    pub fn size_on_disk(&self) -> u64 {
        self.lock().segments.values().map(|s| s.len).sum()
    }
}

fn parse_whole_frame(bytes: &[u8], at: Ref) -> Result<(u8, Vec<u8>), StoreError> {
    match read_frame(bytes, 0) {
        FrameRead::Frame { kind, body, .. } => Ok((kind, body.to_vec())),
        _ => Err(StoreError::Corrupt {
            tree: "joblog",
            reason: format!("damaged frame at segment {} offset {}", at.seg, at.off),
        }),
    }
}

impl State {
    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.names.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.names.insert(a.clone());
        a
    }

    fn unref(&mut self, at: Ref) {
        if let Some(s) = self.segments.get_mut(&at.seg) {
            s.refs = s.refs.saturating_sub(1);
        }
    }

    fn addref(&mut self, at: Ref) {
        if let Some(s) = self.segments.get_mut(&at.seg) {
            s.refs += 1;
        }
    }

    fn moved(&mut self, from: Ref, to: Ref) {
        self.unref(from);
        self.addref(to);
    }

    fn apply_event(&mut self, id: &str, at: Ref) {
        if let Some(e) = self.events.get_mut(id) {
            let old = std::mem::replace(&mut e.at, at);
            self.moved(old, at);
            return;
        }
        self.events.insert(
            Arc::from(id),
            EventEntry {
                at,
                jobs: 0,
                first: None,
            },
        );
        self.addref(at);
    }

    /// Returns true when the job is new to the index.
    fn apply_job(
        &mut self,
        id: JobId,
        status: JobStatus,
        finished_ms: i64,
        trigger: &str,
        event_id: &str,
        at: Ref,
    ) -> bool {
        if let Some(e) = self.index.get_mut(&id) {
            let (old_at, old_status) = (e.at, e.status);
            e.at = at;
            e.status = status;
            e.finished_ms = finished_ms;
            self.unfinished = self.unfinished + usize::from(is_unfinished(status))
                - usize::from(is_unfinished(old_status));
            self.moved(old_at, at);
            return false;
        }
        let trigger = self.intern(trigger);
        let event_id: Arc<str> = match self.events.get_key_value(event_id) {
            Some((k, _)) => k.clone(),
            None => Arc::from(event_id),
        };
        if let Some(ev) = self.events.get_mut(&event_id) {
            ev.jobs += 1;
            ev.first = Some(ev.first.map_or(id, |f| f.min(id)));
        }
        self.index.insert(
            id,
            JobEntry {
                status,
                trigger,
                event_id,
                finished_ms,
                at,
            },
        );
        self.unfinished += usize::from(is_unfinished(status));
        self.addref(at);
        true
    }

    fn apply_forget(&mut self, id: JobId) {
        let Some(e) = self.index.remove(&id) else {
            return;
        };
        self.unfinished -= usize::from(is_unfinished(e.status));
        self.unref(e.at);
        let gone = match self.events.get_mut(&e.event_id) {
            Some(ev) => {
                ev.jobs = ev.jobs.saturating_sub(1);
                ev.jobs == 0
            }
            None => false,
        };
        if gone {
            if let Some(ev) = self.events.remove(&e.event_id) {
                self.unref(ev.at);
            }
        }
    }
}

#[cfg(test)]
mod tests;
