//! The job log's bytes on disk (docs/job-log.md). A segment is a 16-byte header (`MGJL`,
//! format version, sequence number) followed by frames:
//! `[len u32][crc32 u32 over kind+body][kind u8][body]`, little endian, `len` counting kind
//! and body. A frame never spans two segments. Bodies:
//! - event: `[id_len u16][id][payload JSON]`, written once for all the jobs it became;
//! - job: `[job id 16][status u8][flags u8][finished_ms i64][trigger_len u16][trigger]
//!   [event_id_len u16][event_id][record JSON without its event]`, one per state change; the
//!   fixed fields let replay build the index without parsing JSON;
//! - forget: `[job id 16]`, a job the sweep removed (so replay does not bring it back).

use crate::model::job::{JobId, JobStatus};

pub const MAGIC: &[u8; 4] = b"MGJL";
pub const VERSION: u32 = 1;
pub const SEGMENT_HEADER: usize = 16;
pub const FRAME_HEAD: usize = 9;

pub const KIND_EVENT: u8 = 1;
pub const KIND_JOB: u8 = 2;
pub const KIND_FORGET: u8 = 3;

/// The job was written with a dedup entry under its event id (rebuilt from the log on start).
pub const FLAG_DEDUP: u8 = 1;

pub fn segment_header(seq: u64) -> [u8; SEGMENT_HEADER] {
    let mut h = [0u8; SEGMENT_HEADER];
    h[..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&VERSION.to_le_bytes());
    h[8..].copy_from_slice(&seq.to_le_bytes());
    h
}

/// The sequence number in a segment header, if it is one this version reads.
pub fn read_segment_header(bytes: &[u8]) -> Option<u64> {
    let h = bytes.get(..SEGMENT_HEADER)?;
    if &h[..4] != MAGIC || h[4..8] != VERSION.to_le_bytes() {
        return None;
    }
    Some(u64::from_le_bytes(h[8..].try_into().ok()?))
}

/// Appends one frame to `out`, its body written by `body`. Returns the frame's length.
pub fn write_frame(out: &mut Vec<u8>, kind: u8, body: impl FnOnce(&mut Vec<u8>)) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEAD]);
    out[start + 8] = kind;
    body(out);
    let len = (out.len() - start - 8) as u32;
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

pub enum FrameRead<'a> {
    /// A frame and the offset just after it.
    Frame {
        kind: u8,
        body: &'a [u8],
        next: usize,
    },
    /// Nothing more: the end of the bytes, or zeros (never-written space).
    End,
    /// Bytes that are not a whole valid frame: torn or damaged.
    Bad,
}

pub fn read_frame(bytes: &[u8], off: usize) -> FrameRead<'_> {
    let Some(head) = bytes.get(off..off + FRAME_HEAD) else {
        return if bytes.len() <= off || bytes[off..].iter().all(|b| *b == 0) {
            FrameRead::End
        } else {
            FrameRead::Bad
        };
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len == 0 && crc == 0 {
        return if bytes[off..].iter().all(|b| *b == 0) {
            FrameRead::End
        } else {
            FrameRead::Bad
        };
    }
    let Some(checked) = bytes.get(off + 8..off + 8 + len) else {
        return FrameRead::Bad;
    };
    if len == 0 || crc32fast::hash(checked) != crc {
        return FrameRead::Bad;
    }
    FrameRead::Frame {
        kind: checked[0],
        body: &checked[1..],
        next: off + 8 + len,
    }
}

pub fn status_code(s: JobStatus) -> u8 {
    match s {
        JobStatus::Queued => 0,
        JobStatus::Parked => 1,
        JobStatus::Running => 2,
        JobStatus::Succeeded => 3,
        JobStatus::Retrying => 4,
        JobStatus::DeadLettered => 5,
        JobStatus::Cancelled => 6,
    }
}

pub fn status_of(code: u8) -> Option<JobStatus> {
    Some(match code {
        0 => JobStatus::Queued,
        1 => JobStatus::Parked,
        2 => JobStatus::Running,
        3 => JobStatus::Succeeded,
        4 => JobStatus::Retrying,
        5 => JobStatus::DeadLettered,
        6 => JobStatus::Cancelled,
        _ => return None,
    })
}

pub fn put_str(out: &mut Vec<u8>, s: &str) {
    // Trigger names and event ids are bounded far below 64 KiB by the intake; cut, never wrap.
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

/// A cursor over a frame body; every read is bounds-checked (a CRC-valid frame may still come
/// from a different version or a bug).
pub struct Body<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Body<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    pub fn job_id(&mut self) -> Option<JobId> {
        JobId::from_slice(self.take(16)?)
    }
    pub fn str(&mut self) -> Option<&'a str> {
        let n = u16::from_le_bytes(self.take(2)?.try_into().ok()?) as usize;
        std::str::from_utf8(self.take(n)?).ok()
    }
    pub fn rest(&mut self) -> &'a [u8] {
        let r = self.bytes.get(self.at..).unwrap_or_default();
        self.at = self.bytes.len();
        r
    }
}

/// A job frame's fields (the fixed ones replay reads, and the record's JSON).
pub fn read_job_frame(body: &[u8]) -> Option<super::JobFrame<'_>> {
    let mut b = Body::new(body);
    let job_id = b.job_id()?;
    let status = status_of(b.u8()?)?;
    let dedup = b.u8()? & FLAG_DEDUP != 0;
    let finished_ms = b.i64()?;
    let trigger = b.str()?;
    let event_id = b.str()?;
    Some(super::JobFrame {
        job_id,
        status,
        dedup,
        finished_ms,
        trigger,
        event_id,
        json: b.rest(),
    })
}

/// An event frame's id and payload JSON.
pub fn read_event(body: &[u8]) -> Option<(&str, &[u8])> {
    let mut b = Body::new(body);
    let id = b.str()?;
    Some((id, b.rest()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_damage_is_seen() {
        let mut buf = Vec::new();
        write_frame(&mut buf, KIND_EVENT, |o| {
            put_str(o, "e1");
            o.extend_from_slice(b"{}");
        });
        let first_end = buf.len();
        write_frame(&mut buf, KIND_FORGET, |o| o.extend_from_slice(&[7u8; 16]));
        let FrameRead::Frame { kind, body, next } = read_frame(&buf, 0) else {
            panic!("first frame unreadable");
        };
        assert_eq!((kind, next), (KIND_EVENT, first_end));
        assert_eq!(read_event(body), Some(("e1", &b"{}"[..])));
        assert!(matches!(
            read_frame(&buf, next),
            FrameRead::Frame {
                kind: KIND_FORGET,
                ..
            }
        ));
        assert!(matches!(read_frame(&buf, buf.len()), FrameRead::End));
        // A torn tail, a flipped bit, and zeros after the end.
        assert!(matches!(
            read_frame(&buf[..buf.len() - 1], next),
            FrameRead::Bad
        ));
        let mut flipped = buf.clone();
        flipped[first_end - 1] ^= 1;
        assert!(matches!(read_frame(&flipped, 0), FrameRead::Bad));
        let mut zeros = buf.clone();
        zeros.extend_from_slice(&[0u8; 100]);
        assert!(matches!(read_frame(&zeros, buf.len()), FrameRead::End));
    }
}
