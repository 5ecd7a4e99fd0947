//! The open connections of both HTTP listeners (webhooks/routes and admin), with what each is
//! doing, so that slow and idle ones can be closed on time and, when the connection cap or the
//! process's open-file limit is reached, the oldest of them make room for a new client.
//!
//! A connection is in one of three phases:
//! - *head*: waiting for a request's header (from the moment it opened, or once the first byte
//!   of the next request arrived on a kept-alive connection): closed after `header_read_timeout`;
//! - *idle*: kept alive between requests: closed after `idle_timeout`;
//! - *active*: a request is being handled or its response sent: never shed nor timed out here
//!   (the handlers bound their own time).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How often deadlines are checked: a timed-out connection lives at most this much longer.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// The limits both listeners share.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// Most connections open at once across both listeners.
    pub max_connections: usize,
}

/// The registry of open connections. Cheap to clone; both listeners hold the same one.
#[derive(Clone)]
pub struct Connections {
    inner: Arc<Inner>,
}

struct Inner {
    limits: ConnectionLimits,
    /// `max_connections`, lowered to what the open-file limit leaves room for.
    cap: usize,
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
}

/// One connection's phase, updated by its reader and its requests, read by the sweeper.
pub struct ConnState {
    id: u64,
    /// Requests being handled or answered on this connection.
    active: AtomicUsize,
    /// Bytes of a new request arrived since the connection became idle.
    head_started: AtomicBool,
    /// When the current phase began, in milliseconds since the registry's epoch.
    since_ms: AtomicU64,
    epoch: Instant,
    /// Told to close (timed out or shed); still counted until its task ends.
    closing: AtomicBool,
    /// Wakes the connection's task to close it at once.
    close: Notify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Idle,
    Active,
}

impl ConnState {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn phase(&self) -> Phase {
        if self.active.load(Ordering::Acquire) > 0 {
            Phase::Active
        } else if self.head_started.load(Ordering::Acquire) {
            Phase::Head
        } else {
            Phase::Idle
        }
    }

    /// Some bytes were read from the client.
    pub fn on_read(&self) {
        if self.active.load(Ordering::Acquire) == 0 && !self.head_started.load(Ordering::Acquire) {
            self.since_ms.store(self.now_ms(), Ordering::Release);
            self.head_started.store(true, Ordering::Release);
        }
    }

    /// A request's header was parsed: the connection is active until [`RequestGuard`] drops.
    pub fn begin_request(self: &Arc<Self>) -> RequestGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(false, Ordering::Release);
        RequestGuard(self.clone())
    }

    /// Whether a request is being handled or answered on this connection.
    pub fn is_busy(&self) -> bool {
        self.phase() == Phase::Active
    }

    /// Resolves when the connection must be closed now (timed out or shed).
    pub async fn closed(&self) {
        self.close.notified().await;
    }
}

/// Held from a request's header until its response is sent (or dropped).
pub struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let c = &self.0;
        c.since_ms.store(c.now_ms(), Ordering::Release);
        c.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Unregisters the connection when its task ends.
pub struct Registration {
    conns: Connections,
    pub state: Arc<ConnState>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.conns.lock().remove(&self.state.id);
    }
}

impl Connections {
    /// A registry for `limits`, its cap lowered to fit the process's open-file limit. Starts
    /// the task that closes timed-out connections (it ends with the last clone).
    pub fn new(limits: ConnectionLimits) -> Self {
        let cap = match open_file_limit() {
            Some(nofile) => {
                // Left for everything else the process opens: the store, brokers, the pipes
                // of command runnables.
                let reserve = (nofile / 4).clamp(64, 1024);
                let fit = nofile.saturating_sub(reserve).max(16);
                if fit < limits.max_connections {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        open_file_limit = nofile,
                        cap = fit,
                        "[server] max_connections lowered to fit the open-file limit (raise it with `ulimit -n` or LimitNOFILE=)"
                    );
                }
                limits.max_connections.min(fit)
            }
            None => limits.max_connections,
        };
        let inner = Arc::new(Inner {
            limits,
            cap,
            epoch: Instant::now(),
            next_id: AtomicU64::new(1),
            open: Mutex::new(HashMap::new()),
        });
        tokio::spawn(sweep(Arc::downgrade(&inner)));
        Self { inner }
    }

    pub fn limits(&self) -> &ConnectionLimits {
        &self.inner.limits
    }

    /// How many connections may be open at once.
    pub fn cap(&self) -> usize {
        self.inner.cap
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.inner.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection, first closing the oldest idle or slow one when the cap is
    /// reached. `None` when every open connection is busy with a request: the caller refuses
    /// the new one.
    pub fn admit(&self) -> Option<Registration> {
        let mut open = self.lock();
        if open.len() >= self.inner.cap && !shed_oldest(&open) {
            return None;
        }
        let state = Arc::new(ConnState {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            active: AtomicUsize::new(0),
            // A new connection owes its first request's header.
            head_started: AtomicBool::new(true),
            since_ms: AtomicU64::new(self.inner.epoch.elapsed().as_millis() as u64),
            epoch: self.inner.epoch,
            closing: AtomicBool::new(false),
            close: Notify::new(),
        });
        open.insert(state.id, state.clone());
        drop(open);
        Some(Registration {
            conns: self.clone(),
            state,
        })
    }

    /// Closes the oldest idle or slow connection to free its file descriptor (the process
    /// ran out of them). False when there is none.
    pub fn shed_one(&self) -> bool {
        shed_oldest(&self.lock())
    }
}

/// Tells the connection that has been idle or waiting for a header the longest to close.
/// Connections already told are skipped: they are counted only until their task ends.
fn shed_oldest(open: &HashMap<u64, Arc<ConnState>>) -> bool {
    let oldest = open
        .values()
        .filter(|c| c.phase() != Phase::Active && !c.close_requested())
        .min_by_key(|c| c.since_ms.load(Ordering::Acquire));
    match oldest {
        Some(c) => {
            tracing::debug!(
                connection = c.id,
                "connection limit reached: closing the oldest idle or slow connection"
            );
            c.request_close();
            true
        }
        None => false,
    }
}

impl ConnState {
    fn request_close(&self) {
        self.closing.store(true, Ordering::Release);
        self.close.notify_one();
    }

    fn close_requested(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }
}

/// Closes connections past their header or idle deadline, every [`SWEEP_EVERY`].
async fn sweep(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let now = inner.epoch.elapsed().as_millis() as u64;
        let header_ms = inner.limits.header_read_timeout.as_millis() as u64;
        let idle_ms = inner.limits.idle_timeout.as_millis() as u64;
        let open = inner.open.lock().unwrap_or_else(|p| p.into_inner());
        for c in open.values() {
            if c.close_requested() {
                continue;
            }
            let since = c.since_ms.load(Ordering::Acquire);
            let limit = match c.phase() {
                Phase::Active => continue,
                Phase::Head => header_ms,
                Phase::Idle => idle_ms,
            };
            if now.saturating_sub(since) > limit {
                tracing::debug!(
                    connection = c.id,
                    phase = ?c.phase(),
                    "closing a connection past its header or idle timeout"
                );
                c.request_close();
            }
        }
    }
}

/// The process's soft limit on open files, when it has one.
fn open_file_limit() -> Option<usize> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    if rc != 0 || rl.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    usize::try_from(rl.rlim_cur).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: max,
        }
    }

    #[tokio::test]
    async fn the_oldest_idle_or_slow_connection_makes_room_and_busy_ones_stay() {
        let conns = Connections::new(limits(2));
        let a = conns.admit().unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let b = conns.admit().unwrap();
        let _busy = b.state.begin_request();
        // Full: `a` (waiting for its header) is shed, `b` (handling a request) is not.
        let c = conns.admit().unwrap();
        assert!(a.state.close_requested());
        assert!(!b.state.close_requested());
        drop(a);
        let _busy_c = c.state.begin_request();
        assert!(conns.admit().is_none(), "every connection is busy");
        assert_eq!(conns.len(), 2);
    }
}
