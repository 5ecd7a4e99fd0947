//! Prometheus metrics, through the `metrics` facade (the shell installs the exporter). Names
//! and labels are documented in docs/admin-api.md.

use std::time::Duration;

use metrics::{counter, histogram};

pub fn event_received(trigger: &str, kind: &str) {
    counter!("millgate_events_received_total", "trigger" => trigger.to_owned(), "kind" => kind.to_owned())
        .increment(1);
}

pub fn event_filtered(trigger: &str, kind: &str) {
    counter!("millgate_events_filtered_total", "trigger" => trigger.to_owned(), "kind" => kind.to_owned())
        .increment(1);
}

pub fn event_deduplicated(trigger: &str, kind: &str) {
    counter!("millgate_events_deduplicated_total", "trigger" => trigger.to_owned(), "kind" => kind.to_owned())
        .increment(1);
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

pub fn trigger_restarted(trigger: &str) {
    counter!("millgate_trigger_restarts_total", "trigger" => trigger.to_owned()).increment(1);
}

/// A record the store could not decode was moved to the quarantine.
pub fn record_quarantined(tree: &'static str) {
    counter!("millgate_store_quarantined_total", "tree" => tree).increment(1);
}
