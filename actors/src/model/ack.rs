//! What a source needs to hear when its job ends: the acknowledgement handle (which also holds
//! the job's `max_in_flight` slot and counts its outcome), the waiters of sync requests, and a
//! trigger's counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::oneshot;

use super::job::{JobId, JobOutcome};
use super::metrics::TriggerMetrics;

type SettleFn = Box<dyn FnOnce(&JobOutcome) + Send>;

/// What a source needs done when its job's outcome is settled: a Kafka commit, a JetStream
/// ack, a sync HTTP answer. Dropping it (settled or not) releases the trigger's in-flight slot.
#[derive(Default)]
pub struct AckHandle {
    on_settle: Option<SettleFn>,
    in_flight: Vec<Arc<AtomicUsize>>,
    counters: Option<Arc<TriggerCounters>>,
}

impl AckHandle {
    pub fn none() -> Self {
        Self::default()
    }

    pub fn on_settle(f: impl FnOnce(&JobOutcome) + Send + 'static) -> Self {
        Self {
            on_settle: Some(Box::new(f)),
            in_flight: Vec::new(),
            counters: None,
        }
    }

    /// Counts the job's outcome in its trigger's counters.
    pub fn count_outcome(&mut self, counters: Arc<TriggerCounters>) {
        self.counters = Some(counters);
    }

    /// The trigger's counters the outcome is counted in, if any.
    pub fn counters(&self) -> Option<&TriggerCounters> {
        self.counters.as_deref()
    }

    /// Counts the job against a trigger's `max_in_flight` until the handle is dropped.
    pub fn add_in_flight(&mut self, counter: Arc<AtomicUsize>) {
        self.in_flight.push(counter);
    }

    /// Tells the source the outcome and counts it. The job's `max_in_flight` slots stay taken
    /// until the returned [`InFlightSlots`] is dropped: the router keeps them until the outcome is
    /// on disk, so that what a crash can make run twice stays bounded by `max_in_flight`.
    pub fn settle(mut self, outcome: &JobOutcome) -> InFlightSlots {
        if let Some(c) = &self.counters {
            let (counter, series) = match outcome {
                JobOutcome::Succeeded(_) => (&c.jobs_succeeded, &c.metrics.succeeded),
                JobOutcome::DeadLettered(_) => (&c.jobs_dead_lettered, &c.metrics.dead_lettered),
            };
            counter.fetch_add(1, Ordering::Relaxed);
            series.increment(1);
        }
        if let Some(f) = self.on_settle.take() {
            f(outcome);
        }
        InFlightSlots(std::mem::take(&mut self.in_flight))
    }
}

impl Drop for AckHandle {
    fn drop(&mut self) {
        drop(InFlightSlots(std::mem::take(&mut self.in_flight)));
    }
}

/// A settled job's `max_in_flight` slots, released when dropped.
#[must_use = "dropping the slots releases them at once"]
pub struct InFlightSlots(Vec<Arc<AtomicUsize>>);

impl Drop for InFlightSlots {
    fn drop(&mut self) {
        for c in &self.0 {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Whoever wants to hear when a job ends (sync requests, `GET /jobs/{id}?wait`).
#[derive(Default)]
pub struct Watchers {
    waiting: Mutex<HashMap<JobId, Vec<oneshot::Sender<JobOutcome>>>>,
}

impl Watchers {
    pub fn watch(&self, id: JobId) -> oneshot::Receiver<JobOutcome> {
        let (tx, rx) = oneshot::channel();
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        w.entry(id).or_default().push(tx);
        rx
    }

    pub fn forget(&self, id: JobId) {
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = w.get_mut(&id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                w.remove(&id);
            }
        }
    }

    /// Wakes whoever waits for `id` (the router, once the outcome is on disk).
    pub fn notify(&self, id: JobId, outcome: &JobOutcome) {
        let list = {
            let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            w.remove(&id)
        };
        for tx in list.into_iter().flatten() {
            let _ = tx.send(outcome.clone());
        }
    }
}

/// A trigger's counters (shown by the API), and its Prometheus series.
#[derive(Default)]
pub struct TriggerCounters {
    pub events_received: AtomicU64,
    pub events_filtered: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub jobs_created: AtomicU64,
    pub jobs_succeeded: AtomicU64,
    pub jobs_dead_lettered: AtomicU64,
    pub rejected_busy: AtomicU64,
    pub metrics: TriggerMetrics,
}

impl std::fmt::Debug for TriggerCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TriggerCounters ")?;
        self.snapshot().fmt(f)
    }
}

impl TriggerCounters {
    pub fn new(metrics: TriggerMetrics) -> Self {
        Self {
            metrics,
            ..Default::default()
        }
    }

    pub fn snapshot(&self) -> Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "events_received": get(&self.events_received),
            "events_filtered": get(&self.events_filtered),
            "events_duplicate": get(&self.events_duplicate),
            "jobs_created": get(&self.jobs_created),
            "jobs_succeeded": get(&self.jobs_succeeded),
            "jobs_dead_lettered": get(&self.jobs_dead_lettered),
            "rejected_busy": get(&self.rejected_busy),
        })
    }
}

/// Events per second over the last minute: 60 one-second buckets.
#[derive(Debug)]
pub struct RateWindow {
    buckets: Mutex<([u32; 60], u64)>,
}

impl Default for RateWindow {
    fn default() -> Self {
        Self {
            buckets: Mutex::new(([0; 60], 0)),
        }
    }
}

impl RateWindow {
    fn now_sec() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn advance(b: &mut ([u32; 60], u64), now: u64) {
        let (buckets, last) = b;
        if now > *last {
            let gap = (now - *last).min(60);
            for i in 1..=gap {
                buckets[((*last + i) % 60) as usize] = 0;
            }
            *last = now;
        }
    }

    pub fn record(&self) {
        let now = Self::now_sec();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        Self::advance(&mut b, now);
        let slot = (now % 60) as usize;
        b.0[slot] = b.0[slot].saturating_add(1);
    }

    pub fn per_second(&self) -> f64 {
        let now = Self::now_sec();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        Self::advance(&mut b, now);
        f64::from(b.0.iter().sum::<u32>()) / 60.0
    }
}
