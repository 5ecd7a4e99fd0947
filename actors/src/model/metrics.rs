//! Prometheus metrics, through the `metrics` facade (the shell installs the exporter). Names
//! and labels are documented in docs/admin-api.md.

use std::time::Duration;

use metrics::{counter, histogram, Counter, Histogram};

/// One trigger's series, resolved once when the trigger is built: a labelled lookup costs a
/// key's allocations and a hash per call, and these are counted for every event and job.
pub struct TriggerMetrics {
    pub received: Counter,
    pub filtered: Counter,
    pub deduplicated: Counter,
    pub succeeded: Counter,
    pub dead_lettered: Counter,
    pub retried: Counter,
    /// `millgate_job_duration_seconds` for the trigger's runnable.
    pub duration: Histogram,
}

impl TriggerMetrics {
    pub fn new(trigger: &str, kind: &str, runnable: &str) -> Self {
        let outcome = |o: &'static str| counter!("millgate_jobs_total", "trigger" => trigger.to_owned(), "outcome" => o);
        let event = |name: &'static str| counter!(name, "trigger" => trigger.to_owned(), "kind" => kind.to_owned());
        Self {
            received: event("millgate_events_received_total"),
            filtered: event("millgate_events_filtered_total"),
            deduplicated: event("millgate_events_deduplicated_total"),
            succeeded: outcome("succeeded"),
            dead_lettered: outcome("dead_lettered"),
            retried: outcome("retried"),
            duration: histogram!("millgate_job_duration_seconds", "trigger" => trigger.to_owned(), "runnable" => runnable.to_owned()),
        }
    }

    /// Series that count nothing (counters built outside a trigger, in tests).
    pub fn noop() -> Self {
        Self {
            received: Counter::noop(),
            filtered: Counter::noop(),
            deduplicated: Counter::noop(),
            succeeded: Counter::noop(),
            dead_lettered: Counter::noop(),
            retried: Counter::noop(),
            duration: Histogram::noop(),
        }
    }
}

/// `outcome`: `succeeded`, `dead_lettered`, `retried`, `cancelled`.
pub fn job_outcome(trigger: &str, outcome: &'static str) {
    counter!("millgate_jobs_total", "trigger" => trigger.to_owned(), "outcome" => outcome)
        .increment(1);
}

pub fn job_duration(trigger: &str, runnable: &str, d: Duration) {
    histogram!("millgate_job_duration_seconds", "trigger" => trigger.to_owned(), "runnable" => runnable.to_owned())
        .record(d.as_secs_f64());
}

/// What a pulled source told its broker about a message: `action` is the kind's word
/// (`deleted`, `extended`, `released`, `acked`, `nacked`, `failed`).
pub fn source_acks(trigger: &str, kind: &'static str, action: &'static str) -> Counter {
    counter!("millgate_source_acks_total", "trigger" => trigger.to_owned(), "kind" => kind, "action" => action)
}

pub fn trigger_restarted(trigger: &str) {
    counter!("millgate_trigger_restarts_total", "trigger" => trigger.to_owned()).increment(1);
}

/// A record the store could not decode was moved to the quarantine.
pub fn record_quarantined(tree: &'static str) {
    counter!("millgate_store_quarantined_total", "tree" => tree).increment(1);
}

impl Default for TriggerMetrics {
    fn default() -> Self {
        Self::noop()
    }
}
