//! `GET /metrics`: Prometheus text format. Counters and histograms are recorded where things
//! happen (millgate-actors, through the `metrics` facade); gauges are read at scrape time.

use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::AdminState;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once (several services in one process share it).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("millgate_job_duration_seconds".into()),
                    &[
                        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                        30.0, 60.0, 300.0,
                    ],
                )
                .ok()?;
            match builder.install_recorder() {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the Prometheus recorder; /metrics will be empty");
                    None
                }
            }
        })
        .as_ref()
}

pub async fn render(State(state): State<AdminState>) -> impl IntoResponse {
    let Some(handle) = handle() else {
        return (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            String::new(),
        );
    };
    let s = &state.service;
    metrics::gauge!("millgate_queue_depth").set(s.store.queue_depth() as f64);
    metrics::gauge!("millgate_store_size_bytes").set(s.store.size_on_disk() as f64);
    metrics::gauge!("millgate_store_quarantined_records").set(s.store.quarantine_len() as f64);
    for entry in s.registry.all() {
        let rt = &entry.runtime;
        let name = rt.name().to_string();
        metrics::gauge!("millgate_trigger_in_flight", "trigger" => name.clone())
            .set(rt.in_flight.load(Ordering::Relaxed) as f64);
        let up = rt.is_up();
        metrics::gauge!("millgate_trigger_up", "trigger" => name).set(if up { 1.0 } else { 0.0 });
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
}
