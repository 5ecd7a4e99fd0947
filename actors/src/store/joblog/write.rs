//! Writing what was appended (the committer's group commit) and dropping old segments.

use super::*;

impl JobLog {
    /// Writes every append made before this call; with `sync`, also makes it durable (and
    /// whatever an earlier unsynced write left). One writer at a time.
    pub fn write_pending(&self, sync: bool) -> Result<(), StoreError> {
        let _writer = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (batch, mut files, dir_dirty) = {
            let mut st = self.lock();
            if st.pending.is_empty() && (!sync || (st.unsynced.is_empty() && !st.dir_dirty)) {
                return Ok(());
            }
            let batch = Arc::new(std::mem::take(&mut st.pending));
            st.writing.push(batch.clone());
            let mut segs: BTreeSet<u64> = batch.iter().map(|c| c.seg).collect();
            if sync {
                segs.extend(std::mem::take(&mut st.unsynced));
            }
            let files: Vec<(u64, Arc<File>)> = segs
                .into_iter()
                .filter_map(|s| st.segments.get(&s).map(|g| (s, g.file.clone())))
                .collect();
            let dir_dirty = sync && std::mem::take(&mut st.dir_dirty);
            (batch, files, dir_dirty)
        };
        let mut result = Ok(());
        for c in batch.iter() {
            if let Some((_, f)) = files.iter().find(|(s, _)| *s == c.seg) {
                if let Err(e) = f.write_all_at(&c.bytes, c.off) {
                    result = Err(io("write", e));
                    break;
                }
            }
        }
        if result.is_ok() && sync {
            for (_, f) in &files {
                if let Err(e) = f.sync_data() {
                    result = Err(io("sync", e));
                    break;
                }
            }
            if result.is_ok() && dir_dirty {
                result = File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| io("sync directory", e));
            }
        }
        let mut st = self.lock();
        st.writing.retain(|w| !Arc::ptr_eq(w, &batch));
        match &result {
            Ok(()) if !sync => st.unsynced.extend(files.drain(..).map(|(s, _)| s)),
            Ok(()) => {}
            Err(_) => {
                // Kept for the next write: nothing appended is dropped because a write failed.
                if let Ok(chunks) = Arc::try_unwrap(batch) {
                    let later = std::mem::replace(&mut st.pending, chunks);
                    st.pending.extend(later);
                }
                st.unsynced.extend(files.drain(..).map(|(s, _)| s));
                st.dir_dirty |= dir_dirty;
            }
        }
        result
    }

    /// Drops the oldest segments nothing refers to any more, carrying forward the unfinished
    /// jobs (and events) that are all that pins one. Returns how many segments went.
    pub fn drop_segments(&self) -> Result<usize, StoreError> {
        let mut dropped = 0;
        loop {
            let oldest = {
                let mut st = self.lock();
                let Some((&oldest, seg)) = st.segments.iter().next() else {
                    break;
                };
                if oldest == st.active {
                    break;
                }
                if seg.refs > 0 && !self.carry_forward(&mut st, oldest)? {
                    break;
                }
                oldest
            };
            // The carried copies are durable before the originals go.
            self.write_pending(true)?;
            let mut st = self.lock();
            if st.segments.get(&oldest).is_none_or(|s| s.refs > 0) {
                break;
            }
            st.segments.remove(&oldest);
            st.dir_dirty = true;
            drop(st);
            std::fs::remove_file(segment_path(&self.dir, oldest))
                .map_err(|e| io("remove segment", e))?;
            dropped += 1;
        }
        if dropped > 0 {
            self.write_pending(true)?;
        }
        Ok(dropped)
    }

    /// Re-appends what pins segment `seg` when that is only unfinished jobs and events; false
    /// when a finished job still kept by retention pins it.
    fn carry_forward(&self, st: &mut State, seg: u64) -> Result<bool, StoreError> {
        let jobs: Vec<(JobId, Ref)> = st
            .index
            .iter()
            .filter(|(_, e)| e.at.seg == seg)
            .map(|(id, e)| (*id, e.at))
            .collect();
        if jobs
            .iter()
            .any(|(id, _)| st.index.get(id).is_some_and(|e| e.status.is_final()))
        {
            return Ok(false);
        }
        let events: Vec<(Arc<str>, Ref)> = st
            .events
            .iter()
            .filter(|(_, e)| e.at.seg == seg)
            .map(|(k, e)| (k.clone(), e.at))
            .collect();
        let file = match st.segments.get(&seg) {
            Some(s) => s.file.clone(),
            None => return Ok(false),
        };
        let copy = |at: Ref| -> Result<(u8, Vec<u8>), StoreError> {
            let mut buf = vec![0u8; at.len as usize];
            file.read_exact_at(&mut buf, at.off)
                .map_err(|e| io("read", e))?;
            parse_whole_frame(&buf, at)
        };
        for (id, at) in events {
            let (kind, body) = copy(at)?;
            let new = self.append(st, kind, |o| o.extend_from_slice(&body))?;
            if let Some(e) = st.events.get_mut(&id) {
                e.at = new;
            }
            st.moved(at, new);
        }
        for (id, at) in jobs {
            let (kind, body) = copy(at)?;
            let new = self.append(st, kind, |o| o.extend_from_slice(&body))?;
            if let Some(e) = st.index.get_mut(&id) {
                e.at = new;
            }
            st.moved(at, new);
        }
        Ok(true)
    }
}
