//! Reading the segments back on open: the index, the events, what to restore or set aside.

use super::*;

pub(super) fn replay_segment(
    dir: &Path,
    seq: u64,
    newest: bool,
    st: &mut State,
    out: &mut Replayed,
) -> Result<(), StoreError> {
    let path = segment_path(dir, seq);
    let bytes = std::fs::read(&path).map_err(|e| io("read segment", e))?;
    if read_segment_header(&bytes) != Some(seq) {
        tracing::error!(path = %path.display(), "job log segment without a valid header; renamed .corrupt");
        out.damaged_bytes += bytes.len() as u64;
        std::fs::rename(&path, path.with_extension("corrupt"))
            .map_err(|e| io("rename damaged segment", e))?;
        return Ok(());
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io("open segment", e))?;
    st.segments.insert(
        seq,
        Segment {
            file: Arc::new(file),
            len: bytes.len() as u64,
            refs: 0,
        },
    );
    let mut off = SEGMENT_HEADER;
    loop {
        match read_frame(&bytes, off) {
            FrameRead::Frame { kind, body, next } => {
                let at = Ref {
                    seg: seq,
                    off: off as u64,
                    len: (next - off) as u32,
                };
                replay_frame(kind, body, at, st, out);
                off = next;
            }
            FrameRead::End => break,
            FrameRead::Bad if newest => {
                // A write torn by a crash: what follows was never acknowledged.
                if bytes[off..].iter().any(|b| *b != 0) {
                    tracing::warn!(
                        segment = seq,
                        offset = off,
                        bytes = bytes.len() - off,
                        "job log: torn tail cut"
                    );
                }
                if let Some(s) = st.segments.get_mut(&seq) {
                    s.file
                        .set_len(off as u64)
                        .map_err(|e| io("cut torn tail", e))?;
                    s.len = off as u64;
                }
                break;
            }
            FrameRead::Bad => {
                let resume = (off + 1..bytes.len())
                    .find(|o| matches!(read_frame(&bytes, *o), FrameRead::Frame { .. }));
                let skipped = resume.unwrap_or(bytes.len()) - off;
                out.damaged_bytes += skipped as u64;
                tracing::error!(
                    segment = seq,
                    offset = off,
                    skipped,
                    "job log: damaged bytes skipped"
                );
                match resume {
                    Some(o) => off = o,
                    None => break,
                }
            }
        }
    }
    Ok(())
}

fn replay_frame(kind: u8, body: &[u8], at: Ref, st: &mut State, out: &mut Replayed) {
    match kind {
        KIND_EVENT => match read_event(body) {
            Some((id, _)) => st.apply_event(id, at),
            None => out.unreadable.push((
                format!("event frame at {}:{}", at.seg, at.off),
                body.to_vec(),
                "event frame without a readable id".into(),
            )),
        },
        KIND_JOB => match read_job_frame(body) {
            Some(h) => {
                let new =
                    st.apply_job(h.job_id, h.status, h.finished_ms, h.trigger, h.event_id, at);
                if new && h.dedup {
                    out.dedup
                        .entry(h.event_id.to_string())
                        .or_default()
                        .push(h.job_id);
                }
            }
            None => out.unreadable.push((
                format!("job frame at {}:{}", at.seg, at.off),
                body.to_vec(),
                "job frame with unreadable fixed fields".into(),
            )),
        },
        KIND_FORGET => {
            if let Some(id) = frame::Body::new(body).job_id() {
                st.apply_forget(id);
            }
        }
        other => out.unreadable.push((
            format!("frame at {}:{}", at.seg, at.off),
            body.to_vec(),
            format!("unknown frame kind {other}"),
        )),
    }
}

/// Each frame of a closed log directory: (kind, frame length), oldest first (for tests and
/// inspection tools; never called on a log that is open).
pub fn frames(dir: &Path) -> Result<Vec<(u8, usize)>, StoreError> {
    let mut seqs: Vec<u64> = std::fs::read_dir(dir)
        .map_err(|e| io("list", e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_suffix(".seg")
                .and_then(|s| s.parse().ok())
        })
        .collect();
    seqs.sort_unstable();
    let mut out = Vec::new();
    for seq in seqs {
        let bytes = std::fs::read(segment_path(dir, seq)).map_err(|e| io("read", e))?;
        let mut off = SEGMENT_HEADER;
        while let FrameRead::Frame { kind, next, .. } = read_frame(&bytes, off) {
            out.push((kind, next - off));
            off = next;
        }
    }
    Ok(out)
}
