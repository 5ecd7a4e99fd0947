//! Reading request bodies within two bounds: one body's size (`[server] body_limit`) and the
//! bytes all requests may hold in memory at once (`[server] max_buffered_bytes`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The bytes of request bodies that may be held at once, shared by every request.
#[derive(Clone)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

/// Bytes of the budget one request holds; given back when the last clone drops (once the
/// request has become an event or was refused).
pub type BodyPermit = Option<Arc<OwnedSemaphorePermit>>;

impl BodyBudget {
    pub fn new(total: usize) -> Self {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// `n` more bytes for `held`, without waiting: false when the budget has not got them.
    fn take(&self, held: &mut Option<OwnedSemaphorePermit>, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        let Ok(n) = u32::try_from(n) else {
            return false;
        };
        match self.bytes.clone().try_acquire_many_owned(n) {
            Ok(p) => {
                match held {
                    Some(h) => h.merge(p),
                    None => *held = Some(p),
                }
                true
            }
            Err(_) => false,
        }
    }
}

#[derive(Debug)]
pub enum BodyError {
    /// Larger than `body_limit`.
    TooLarge,
    /// Larger than the whole of `max_buffered_bytes`: it could never be taken.
    LargerThanBudget,
    /// The budget is taken by other requests right now.
    Busy,
    Broken(String),
}

/// How long a client may take to send a whole body.
const BODY_DEADLINE: Duration = Duration::from_secs(30);

/// Reads the body up to `limit`, holding its bytes from `budget` (the whole declared length at
/// once when there is a `Content-Length`, else as the bytes arrive). A body that cannot be
/// kept (over `limit`, over the whole budget, or the budget is taken) is still read and
/// dropped, up to a bound, before the refusal goes out: a server that answers while the client
/// is still sending makes most clients see a reset connection instead of the answer.
pub async fn read_limited(
    mut body: Body,
    limit: usize,
    declared: Option<usize>,
    budget: &BodyBudget,
) -> Result<(bytes::Bytes, BodyPermit), BodyError> {
    use http_body_util::BodyExt;
    const DRAIN_MAX: usize = 16 * 1024 * 1024;
    let drain_until = limit.saturating_mul(4).clamp(64 * 1024, DRAIN_MAX);
    if declared.is_some_and(|n| n > drain_until) {
        // Too far over to be worth reading: refuse at once.
        return Err(BodyError::TooLarge);
    }
    let mut held: Option<OwnedSemaphorePermit> = None;
    // Why the body is being dropped rather than kept, once it is.
    let mut refusal = match declared {
        Some(n) if n > limit => Some(BodyError::TooLarge),
        Some(n) if n > budget.total() => Some(BodyError::LargerThanBudget),
        Some(n) if !budget.take(&mut held, n) => Some(BodyError::Busy),
        _ => None,
    };
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    let deadline = tokio::time::Instant::now() + BODY_DEADLINE;
    while let Some(frame) = tokio::time::timeout_at(deadline, body.frame())
        .await
        .map_err(|_| BodyError::Broken("timed out".into()))?
    {
        let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if seen > drain_until {
            return Err(refusal.unwrap_or(BodyError::TooLarge));
        }
        if refusal.is_some() {
            continue;
        }
        let holding = held.as_ref().map_or(0, |p| p.num_permits());
        refusal = if seen > limit {
            Some(BodyError::TooLarge)
        } else if seen > budget.total() {
            Some(BodyError::LargerThanBudget)
        } else if seen > holding && !budget.take(&mut held, seen - holding) {
            Some(BodyError::Busy)
        } else {
            buf.extend_from_slice(&data);
            None
        };
        if refusal.is_some() {
            // Nothing more is kept: the bytes held go back now.
            buf = bytes::BytesMut::new();
            held = None;
        }
    }
    match refusal {
        Some(e) => Err(e),
        None => Ok((buf.freeze(), held.map(Arc::new))),
    }
}
